"""Multi-device tests: they need 8 devices, e.g. 8 virtual CPU devices from
XLA_FLAGS=--xla_force_host_platform_device_count=8. The default suite runs
them in a subprocess (tests/test_multidevice.py); elsewhere they are skipped.
"""

import jax
import pytest

from tests.helpers import N_DEV

collect_ignore_glob = [] if jax.device_count() >= N_DEV else ["test_*.py"]


@pytest.fixture(scope="module")
def mesh():
  """A mesh of the 8 devices along one axis, "data"."""
  assert jax.device_count() >= N_DEV
  # Auto axes: plain jax.jit propagates the shardings (no set_mesh needed).
  return jax.make_mesh(
    (N_DEV,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
