"""Training-step time of two configurations, measured interleaved (A, B, A, B, ...).

    python benchmarks/step_ab.py --a '{"teacher_cache_mb": 0}' --b '{}' \
        --base '{"augment": false, "data": "nern/assets/cifar10_sample_train.npz"}' [--rounds 30]

Both runs are built on the bench configuration (`fit_resnet20.BENCH`, ResNet-20, all kernels,
batch 64) plus `--base`, then `--a` / `--b`. After 3 warm-up steps each, every round times two
steps of A and then two of B, so a machine whose speed drifts (a shared VM) slows both alike;
the medians and their ratio are printed, with the precision each run chose, as one JSON line.

Besides FitConfig keys, a side may set "onednn_linear": false to run the predictor's float32
CPU layers on PyTorch's own Linear (MKL) instead of oneDNN (`nern.cpu_linear.enabled`):

    python benchmarks/step_ab.py --base '{"amp": false}' --a '{"onednn_linear": false}' --b '{}'

"channels_last": false to keep images and activations NCHW on the CPU (`nern.conv_layout`):

    python benchmarks/step_ab.py --base '{"amp": false}' --a '{"channels_last": false}' --b '{}'

and "compile": true to run the step's forward passes (`NernRun._predict`, `NernRun._distillation`)
through `torch.compile` (inductor; their backward passes are compiled with them). Inductor cannot
take the oneDNN products (its lowering wants their weights as graph constants), so a compiled side
also sets "onednn_linear": false. Its warm-up seconds (compilation) are printed:

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/step_ab.py --base '{"amp": false}' \
        --a '{}' --b '{"onednn_linear": false, "compile": true}'

Give each kernel choice (native, or AVX2 forced with ATEN_CPU_CAPABILITY=avx2) its own inductor
cache: with torch 2.14.1, a native run that found kernels compiled under forced AVX2 in the
cache crashed (heap corruption).
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

import nern.conv_layout  # noqa: E402
import nern.cpu_linear  # noqa: E402
from nern import FitConfig, load_state_dict  # noqa: E402
from nern.data import resolve_dataset  # noqa: E402
from nern.precision import describe_cpu  # noqa: E402
from nern.train import NernRun  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", default="{}", help="overrides of configuration A (JSON)")
    ap.add_argument("--b", default="{}", help="overrides of configuration B (JSON)")
    ap.add_argument("--base", default="{}", help="overrides of the bench configuration for both (JSON)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sd = load_state_dict(resolve_dataset("cifar10").parent / "resnet20-12fca82f.th")
    base = {**BENCH, "threads": args.threads, "steps": 10**6, **json.loads(args.base)}
    sides = {k: json.loads(v) for k, v in (("a", args.a), ("b", args.b))}
    onednn = {k: bool(side.pop("onednn_linear", True)) for k, side in sides.items()}
    compiled = {k: bool(side.pop("compile", False)) for k, side in sides.items()}
    if any(compiled[k] and onednn[k] for k in sides):
        ap.error('a side with "compile": true needs "onednn_linear": false (see --help)')
    channels_last = {k: bool(side.pop("channels_last", True)) for k, side in sides.items()}
    runs = {}
    for k, side in sides.items():  # the layout is fixed when a run is built (its inputs and teacher cache)
        nern.conv_layout.enabled = channels_last[k]
        runs[k] = NernRun(sd, FitConfig(**{**base, **side}), source_sha256="ab")
    nern.conv_layout.enabled = True
    for k, run in runs.items():
        if compiled[k]:
            run._predict, run._distillation = torch.compile(run._predict), torch.compile(run._distillation)

    def step(k: str) -> None:
        nern.cpu_linear.enabled = onednn[k]
        runs[k].train_step()

    warmup = {}
    for k in runs:
        t0 = time.perf_counter()
        for _ in range(3):
            step(k)
        warmup[k] = round(time.perf_counter() - t0, 1)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(args.rounds):
        for k in runs:
            t0 = time.perf_counter()
            step(k)
            step(k)
            times[k].append((time.perf_counter() - t0) / 2)
    nern.cpu_linear.enabled = True
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "a": json.loads(args.a), "b": json.loads(args.b), "base": json.loads(args.base),
        "warmup_s": warmup, "a_step_s": round(med["a"], 4), "b_step_s": round(med["b"], 4), "b_over_a": round(med["b"] / med["a"], 3),
        "precision": {k: "bf16" if r.amp else "fp32" for k, r in runs.items()},
        "teacher_cache": {k: r.teacher_cache is not None for k, r in runs.items()},
        "cpu": describe_cpu(), "threads": args.threads, "rounds": args.rounds,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
