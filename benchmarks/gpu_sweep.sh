#!/usr/bin/env bash
# Run several fit_sweep.py configurations side by side on one GPU (each is launch-bound, so
# they share the card well). Usage: benchmarks/gpu_sweep.sh STEPS POINTS OUTDIR BASE_JSON CFG_JSON...
set -u
steps=$1; points=$2; out=$3; base=$4; shift 4
mkdir -p "$out"
i=0
for cfg in "$@"; do
  python3 benchmarks/fit_sweep.py --steps "$steps" --points "$points" --base "$base" \
    --grid "[$cfg]" --out "$out/sweep.jsonl" > "$out/run$i.log" 2>&1 &
  i=$((i+1))
done
wait
tail -n 3 "$out"/run*.log
