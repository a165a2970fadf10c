#!/usr/bin/env bash
# The main job: install, start the embedded service (SQLite + local broker, no servers to
# install), fit the shipped ResNet20 through it, download and reconstruct the predictor, and
# print the accuracies. Extra arguments go to `nern demo` (e.g. --stop, --steps 300).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/nern demo "$@"
