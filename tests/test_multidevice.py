"""Runs tests/multidevice on 8 virtual CPU devices in a subprocess."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_multidevice_suite():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "tests/multidevice",
      "-q",
      "-p",
      "no:cacheprovider",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  out = proc.stdout + proc.stderr
  # A crash inside XLA (an abort) writes its cause to stderr first and long
  # thread dumps after: show the start of stderr as well as the end.
  assert proc.returncode == 0, (
    f"exit {proc.returncode}\n{proc.stderr[:3000]}\n...\n{out[-3000:]}"
  )
  passed = re.search(r"(\d+) passed", out)
  assert passed and int(passed.group(1)) >= 5, out[-3000:]
  assert "skipped" not in out.splitlines()[-1], out[-3000:]
