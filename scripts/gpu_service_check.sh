#!/usr/bin/env bash
# On a GPU machine: run a real CUDA job (and a device=auto job) through the service — API and a
# gpu,cpu worker as separate processes — and print the results as JSON lines. Elsewhere the test
# is skipped and says why. Uses the project's .venv (scripts/install.sh) unless PYTHON is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi -L 2>/dev/null | sed 's/^/# /' || echo "# nvidia-smi: not found"
exec "$PY" -m pytest tests/worker/test_gpu_service.py -s -q -rs "$@"
