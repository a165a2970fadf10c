"""Training-step time with the predictor's float32 CPU Linear layers on oneDNN vs PyTorch's own.

    python benchmarks/linear_backend_ab.py --base '{"amp": false}' [--rounds 20] [--threads 2]

Two runs of the bench configuration (`fit_resnet20.BENCH` plus `--base`), identical except that
run A has `nern.cpu_linear.enabled` off (MKL's sgemm, as nn.Linear) and run B on (oneDNN, see
nern/cpu_linear.py). Interleaved as in step_ab.py: after 3 warm-up steps each, every round times
two steps of A, then two of B. Prints one JSON line: both medians, their ratio, the precision
(with bf16 autocast both runs take the same path: the ratio should be ~1), the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit_resnet20 import BENCH  # noqa: E402

import nern.cpu_linear  # noqa: E402
from nern import FitConfig, load_state_dict  # noqa: E402
from nern.data import resolve_dataset  # noqa: E402
from nern.precision import describe_cpu  # noqa: E402
from nern.train import NernRun  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="{}", help="overrides of the bench configuration (JSON)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sd = load_state_dict(resolve_dataset("cifar10").parent / "resnet20-12fca82f.th")
    cfg = FitConfig(**{**BENCH, "threads": args.threads, "steps": 10**6, **json.loads(args.base)})
    runs = {"mkl": NernRun(sd, cfg, source_sha256="ab"), "onednn": NernRun(sd, cfg, source_sha256="ab")}

    def step(which: str) -> None:
        nern.cpu_linear.enabled = which == "onednn"
        runs[which].train_step()

    for which in runs:
        for _ in range(3):
            step(which)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for which in runs:
            t0 = time.perf_counter()
            step(which)
            step(which)
            times[which].append((time.perf_counter() - t0) / 2)
    nern.cpu_linear.enabled = True
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "base": json.loads(args.base), "mkl_step_s": round(med["mkl"], 4), "onednn_step_s": round(med["onednn"], 4),
        "onednn_over_mkl": round(med["onednn"] / med["mkl"], 3), "precision": "bf16" if runs["mkl"].amp else "fp32",
        "teacher_cache": runs["mkl"].teacher_cache is not None, "cpu": describe_cpu(), "rounds": args.rounds,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
