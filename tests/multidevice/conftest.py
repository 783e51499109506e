"""Multi-device tests: they need 8 devices, e.g. 8 virtual CPU devices from
XLA_FLAGS=--xla_force_host_platform_device_count=8. The default suite runs
them in a subprocess (tests/test_multidevice.py); elsewhere they are skipped.
"""

import jax

collect_ignore_glob = [] if jax.device_count() >= 8 else ["test_*.py"]
