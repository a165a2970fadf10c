#!/usr/bin/env bash
# The GPU checks of the fit path, as one prepared script for a CUDA machine (about 7-10 minutes
# on one H200). JSON lines go to $OUT (default docs/results/) as gpu_check_<date>.jsonl; copy them
# into docs/results/ and the README.
#   1. graph_parity: 30 steps eager, eager again (the GPU's own noise) and as a CUDA graph, same
#      seed and batches: loss and parameter differences, "ok" when the graph is within the noise.
#   2. the bench (fit_resnet20.py) for ResNet-20 (h=180, 3000 steps) and ResNet-56 (h=320, 1500
#      steps), each with cuda_graphs on and off, same seed and steps: median_step_s (targets:
#      <= 4 ms and <= 8 ms with graphs; 33.6 and 76.2 ms before) and top-1 at equal steps
#      (curve, final_top1); each JSON line says which path ran ("cuda_graphs") and log_every.
#   3. aggregate fits per hour for 1, 2, 4 and 8 concurrent ResNet-20 jobs (graphs on: the default).
# A failing step is logged and the script goes on, so one run yields every figure it can.
#   NERN_DATA_DIR=/path/to/shared/data bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-docs/results}
mkdir -p "$OUT"
log="$OUT/gpu_check_$(date -u +%Y%m%d).jsonl"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 1
"$PY" benchmarks/graph_parity.py --steps 30 | tail -n 1 >>"$log"
for spec in "resnet20 3000" "resnet56 1500"; do
  set -- $spec
  for graphs in true false; do
    "$PY" benchmarks/fit_resnet20.py --checkpoint "$1" --steps "$2" --evals 3 \
      --set "{\"device\": \"cuda\", \"threads\": null, \"cuda_graphs\": $graphs}" | tail -n 1 >>"$log"
  done
done
"$PY" benchmarks/gpu_throughput.py --device cuda --concurrency 1,2,4,8 --steps 500 >>"$log"
echo "wrote $log"
