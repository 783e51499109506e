#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the demo: the paper's toy experiment
# (Sec. 4.1), fine-tuning a converged MLP with PROFIT vs standard fine-tuning.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" examples
exec .venv/bin/python -m examples.toy_demo "$@"
