"""How close one training step runs to this machine's matrix throughput.

    python benchmarks/step_roofline.py [--steps 30] [--threads 2] [--set '{"amp": false}']

Counts the FLOPs of one bench training step (predictor forward/backward, the original network's
forward, the reconstructed network's forward and backward; torch's FlopCounterMode counts
matmuls and convolutions, 2 per multiply-add), times the step (median), and prints the achieved
rate next to the measured fp32 and bf16 matrix-product throughput of this CPU. The counted step
runs the predictor on PyTorch's own Linear: FlopCounterMode does not see the oneDNN products of
`nern.cpu_linear` (it would miss 11.8 of ResNet-20's 38.4 GFLOP); the timed steps use them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit_resnet20 import BENCH  # noqa: E402

import nern.cpu_linear  # noqa: E402
from nern import FitConfig, load_state_dict  # noqa: E402
from nern.data import resolve_dataset  # noqa: E402
from nern.precision import native_bf16  # noqa: E402
from nern.train import NernRun  # noqa: E402


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", default="{}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sd = load_state_dict(resolve_dataset("cifar10").parent / "resnet20-12fca82f.th")
    cfg = FitConfig(**{**BENCH, "threads": args.threads, "steps": 10**6, **json.loads(args.set)})
    run = NernRun(sd, cfg, source_sha256="roofline")
    for _ in range(5):
        run.train_step()
    counter = FlopCounterMode(display=False)
    onednn, nern.cpu_linear.enabled = nern.cpu_linear.enabled, False  # count every product (docstring)
    with counter:
        run.train_step()
    nern.cpu_linear.enabled = onednn
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        run.train_step()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    # Emulated bf16 (AVX2-only CPUs) runs ~40x slower than fp32: a smaller product tells the same.
    fp32 = matmul_rate(torch.float32)
    bf16 = matmul_rate(torch.bfloat16) if native_bf16("cpu") else matmul_rate(torch.bfloat16, n=512, reps=2)
    achieved = flops / step / 1e9
    print(f"FLOPs per step          {flops / 1e9:8.2f} GFLOP (amp={run.amp}, batch {cfg.batch_size}, all kernels)")
    print(f"median step             {step:8.3f} s over {args.steps} steps, {args.threads} threads")
    print(f"achieved                {achieved:8.1f} GFLOP/s")
    print(f"fp32 matmul 2048^3      {fp32:8.1f} GFLOP/s   -> step at {100 * achieved / fp32:5.1f}% of it")
    print(f"bf16 matmul             {bf16:8.1f} GFLOP/s (2048^3 where native, 512^3 where emulated)")
    print(json.dumps({"step_gflop": round(flops / 1e9, 3), "median_step_s": round(step, 4),
                      "achieved_gflops": round(achieved, 1), "fp32_matmul_gflops": round(fp32, 1),
                      "bf16_matmul_gflops": round(bf16, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
