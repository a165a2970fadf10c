"""The bench fit: the shipped ResNet20 on this machine's CPU, scored on the full CIFAR-10 test set.

    python benchmarks/fit_resnet20.py --minutes 30          # schedule fitted to 30 min of training
    python benchmarks/fit_resnet20.py --steps 600           # fixed number of steps
    python benchmarks/fit_resnet20.py --minutes 5 --set '{"w_kd": 1e-3}'   # try a variation

Minutes count training time only: evaluation pauses the clock. With --minutes the step count is
set from the median of the first 20 steps' times (those steps are part of the run; the cosine
schedule's length only matters after the 50-step warm-up). Prints progress, then as its last
line one JSON object: median_step_s, original_top1, final_top1, curve ([seconds, step, top1])
and the configuration.

`curve` scores what the fit packages: the parameter average with the configuration's
`ema_decay` (0.99; `--set '{"ema_decay": 0}'` scores the last step's parameters instead).
--averages 0,0.998 also tracks other decays (0 = the current parameters) and evaluates each at
every point: `curves_averaged` and `final_top1_averaged` in the JSON, keyed by decay. Training
is the same run; only what is evaluated differs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nern import FitConfig, load_state_dict  # noqa: E402
from nern.averaging import ParameterAverage  # noqa: E402
from nern.checkpoint import sha256_file  # noqa: E402
from nern.data import load_images, resolve_dataset  # noqa: E402
from nern.evaluate import evaluate_weights, layer_errors  # noqa: E402
from nern.precision import describe_cpu  # noqa: E402
from nern.train import NernRun  # noqa: E402

# The bench recipe (see README, "Performance"): the representation is the reference's
# (h=180, 5 Linear layers, K=40 → 240-dim embedding); training is ours.
BENCH = dict(
    hidden=180, layers=5, emb_levels=40, emb_base=1.2, permute="crossfilter",
    batch_size=64, kernel_batch_size=0, optimizer="adam", lr=3e-3, lr_warmup_steps=50,
    w_rec=1.0, w_kd=1e-4, w_fmd=1e-4, rec_normalize=True, data="cifar10", augment=True,
    threads=2, seed=0, ema_decay=0.99,  # amp: the library's choice for this machine
)
CALIBRATION_STEPS = 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (overrides --minutes)")
    ap.add_argument("--evals", type=int, default=10, help="evaluations along the run")
    ap.add_argument("--set", default="{}", help="JSON overrides of the bench configuration")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--save-package", default=None, help="also write the fitted predictor package here")
    ap.add_argument("--averages", default="", help="comma-separated EMA decays to evaluate alongside")
    args = ap.parse_args()

    ckpt = args.checkpoint or str(resolve_dataset("cifar10").parent / "resnet20-12fca82f.th")
    sd = load_state_dict(ckpt)
    overrides = json.loads(args.set)
    cfg = FitConfig(**{**BENCH, "steps": args.steps or 10**6, **overrides})
    run = NernRun(sd, cfg, source_sha256=sha256_file(ckpt))
    images, labels = load_images("cifar10-test", 32)
    base = evaluate_weights(run.model, None, images, labels, device=run.device)
    print(f"original top-1 {base['original_top1']:.2f}% on {len(labels)} test images; "
          f"permutation {run.permute_seconds:.1f}s", flush=True)
    originals = {n: run.original[n] for n in run.layout.names}
    averages = {d: ParameterAverage(run.predictor, float(d)) if float(d) > 0 else None
                for d in filter(None, args.averages.split(","))}
    curves_averaged: dict[str, list[list[float]]] = {d: [] for d in averages}

    step_times: list[float] = []
    curve: list[list[float]] = []
    budget = None if args.steps else args.minutes * 60.0
    planned = args.steps

    def score(label: str, w: dict[str, torch.Tensor]) -> float:
        m = evaluate_weights(run.model, w, images, labels, device=run.device)
        err = layer_errors({k: v.cpu() for k, v in w.items()}, originals, total=True)
        print(f"eval  step {run.step:6d}  train {run.train_seconds / 60:6.2f} min  {label:>12}  "
              f"top-1 {m['reconstructed_top1']:6.2f}%  agreement {m['agreement']:6.2f}%  rel.err {err:.4f}",
              flush=True)
        return m["reconstructed_top1"]

    def evaluate() -> float:
        top1 = score(f"ema {run.config.ema_decay:g}" if run.average else "predictor", run.predicted_weights())
        curve.append([round(run.train_seconds, 1), run.step, top1])
        for d, avg in averages.items():
            with avg.applied(run.predictor) if avg is not None else contextlib.nullcontext():
                w = run.predicted_weights(averaged=False)
            label = "predictor" if avg is None else f"ema {d}"
            curves_averaged[d].append([round(run.train_seconds, 1), run.step, score(label, w)])
        return top1

    next_eval = 1
    while True:
        t0 = time.perf_counter()
        losses = run.train_step()
        for avg in averages.values():
            if avg is not None:
                avg.update(run.predictor)
        dt = time.perf_counter() - t0
        run.train_seconds += dt
        step_times.append(dt)
        if planned is None and run.step == CALIBRATION_STEPS:
            median = statistics.median(step_times[5:])
            planned = max(run.step + 1, int(budget / median))
            run.config = run.config.model_copy(update={"steps": planned})
            print(f"calibrated: median step {median:.3f}s -> {planned} steps in {args.minutes:g} min", flush=True)
        if planned is not None and run.step % 50 == 0:
            print(f"step {run.step:6d}/{planned}  {run.train_seconds:7.1f}s  "
                  + "  ".join(f"{k} {v:.4g}" for k, v in losses.items()), flush=True)
        if planned is not None and run.step >= next_eval * planned / args.evals and run.step < planned:
            next_eval += 1
            evaluate()
        if planned is not None and run.step >= planned:
            break
    final = evaluate()
    if args.save_package:
        from nern.package import build_package, save_package

        save_package(build_package(run, {"bench_curve": curve, "steps": run.step}), args.save_package)
    result = {
        "median_step_s": round(statistics.median(step_times), 4),
        "steps": run.step,
        "train_seconds": round(run.train_seconds, 1),
        "original_top1": base["original_top1"],
        "final_top1": final,
        "curve": curve,
        "final_top1_averaged": {d: c[-1][2] for d, c in curves_averaged.items()},
        "curves_averaged": curves_averaged,
        "threads": torch.get_num_threads(),
        "device": str(run.device),
        "precision": "bf16" if run.amp else "fp32",
        "cpu": describe_cpu(),
        "config": run.config.model_dump(mode="json"),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
