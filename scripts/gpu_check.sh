#!/usr/bin/env bash
# The GPU checks of the fit path, as one prepared script for a CUDA machine (about 8 minutes on
# one H200): bench steps and quality for ResNet-20 (h=180) and ResNet-56 (h=320), then aggregate
# fits per hour for 1, 2, 4 and 8 concurrent ResNet-20 jobs. JSON lines go to $OUT (default
# docs/results/) as gpu_check_<date>.jsonl; copy them into docs/results/ and the README.
#   NERN_DATA_DIR=/path/to/shared/data bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-docs/results}
mkdir -p "$OUT"
log="$OUT/gpu_check_$(date -u +%Y%m%d).jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 1
"$PY" benchmarks/fit_resnet20.py --checkpoint resnet20 --steps 3000 --evals 3 --set '{"device": "cuda", "threads": null}' | tail -n 1 >>"$log"
"$PY" benchmarks/fit_resnet20.py --checkpoint resnet56 --steps 1500 --evals 3 --set '{"device": "cuda", "threads": null}' | tail -n 1 >>"$log"
"$PY" benchmarks/gpu_throughput.py --device cuda --concurrency 1,2,4,8 --steps 500 >>"$log"
echo "wrote $log"
