"""Shared pytest configuration: tests run on the CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Runs a test with 64-bit floats enabled, restoring the setting after."""
  with jax.enable_x64(True):
    yield
