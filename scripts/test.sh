#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the test suite on the CPU, one pytest
# worker per core (pytest-xdist). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" test,examples
export JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest -n auto "$@"
