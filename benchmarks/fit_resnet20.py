"""The bench fit: the shipped ResNet20 on this machine's CPU, scored on the full CIFAR-10 test set.

    python benchmarks/fit_resnet20.py --minutes 30          # schedule fitted to 30 min of training
    python benchmarks/fit_resnet20.py --steps 600           # fixed number of steps
    python benchmarks/fit_resnet20.py --minutes 5 --set '{"w_kd": 1e-3}'   # try a variation
    python benchmarks/fit_resnet20.py --checkpoint resnet56 --steps 4000     # ResNet-56, h=320

Minutes count training time only: evaluation pauses the clock. With --minutes the step count is
set from the median of the first 20 steps' times (those steps are part of the run; the cosine
schedule's length only matters after the 50-step warm-up). Prints progress, then as its last
line one JSON object: median_step_s, steps_per_s, original_top1, final_top1, curve ([seconds,
step, top1]), the precision and CPU it used (and the GPU with its peak memory), whether the
step ran as a CUDA graph (cuda_graphs) and how often losses were read back (log_every), and
the configuration. Steps run through the library's one training loop (`nern.trainer.Trainer`).

Step times: on CUDA the host reads the losses (and so waits for the GPU) only every log_every
steps, so a single step's wall time is only the time to queue it; each step is timed as the
mean of its read interval (on the CPU, log_every 1: each step's own time). The graph capture
happens at step 4 (after 3 warm-up steps); the median is robust to it.

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nern import FitConfig, load_state_dict  # noqa: E402
from nern.averaging import ParameterAverage  # noqa: E402
from nern.data import load_labelled, resolve_dataset  # noqa: E402
from nern.evaluate import evaluate_weights, layer_errors  # noqa: E402
from nern.io import sha256_file  # noqa: E402
from nern.precision import describe_cpu  # noqa: E402
from nern.train import NernRun  # noqa: E402
from nern.trainer import Callback, Trainer  # noqa: E402

# The bench recipe (see README, "Performance"): the representation is the reference's
# (h=180, 5 Linear layers, K=40 → 240-dim embedding); training is ours.
BENCH = dict(
    hidden=180, layers=5, emb_levels=40, emb_base=1.2, permute="crossfilter",
    batch_size=64, kernel_batch_size=0, optimizer="adam", lr=3e-3, lr_warmup_steps=50,
    w_rec=1.0, w_kd=1e-4, w_fmd=1e-4, rec_normalize=True, data="cifar10", augment=True,
    threads=2, seed=0, ema_decay=0.99,  # amp: the library's choice for this machine
    distill_late_scale=1.0,  # one loss balance throughout, as when issue 7's table was measured
)
# --checkpoint presets: the shared checkpoint file and the paper's predictor width for it.
PRESETS = {"resnet20": ("resnet20-12fca82f.th", {"hidden": 180}), "resnet56": ("resnet56-4bfd9763.th", {"hidden": 320})}
CALIBRATION_STEPS = 20


class Calibrate(Callback):
    """With a time budget: after CALIBRATION_STEPS steps, fix the schedule's length from their median."""

    def __init__(self, run: NernRun, budget_s: float | None, step_times: list[float]):
        self.run, self.budget, self.step_times = run, budget_s, step_times
        self._read = (run.step, run.train_seconds)  # step and training time at the last read

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if not losses:
            return  # between reads the host has only queued the steps (see the module docstring)
        (step0, t0), now = self._read, (trainer.step, self.run.train_seconds)
        self.step_times.extend([(now[1] - t0) / (now[0] - step0)] * (now[0] - step0))
        self._read = now
        if self.budget is not None and step0 < CALIBRATION_STEPS <= trainer.step:
            median = statistics.median(self.step_times[5:])
            trainer.steps = max(trainer.step + 1, int(self.budget / median))
            self.run.config = self.run.config.model_copy(update={"steps": trainer.steps})
            print(f"calibrated: median step {median:.3f}s -> {trainer.steps} steps in {self.budget / 60:g} min",
                  flush=True)
        if trainer.step // 50 > step0 // 50:
            print(f"step {trainer.step:6d}/{trainer.steps}  {self.run.train_seconds:7.1f}s  "
                  + "  ".join(f"{k} {v:.4g}" for k, v in losses.items()), flush=True)


class Averages(Callback):
    """Extra parameter averages of the same run (decay 0 = the current parameters)."""

    def __init__(self, run: NernRun, decays: list[str]):
        self.run = run
        self.averages = {d: ParameterAverage(run.model.predictor, float(d)) if float(d) > 0 else None for d in decays}

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        for avg in self.averages.values():
            if avg is not None:
                avg.update(self.run.model.predictor)

    def weights(self, decay: str) -> dict[str, torch.Tensor]:
        avg = self.averages[decay]
        with avg.applied(self.run.model.predictor) if avg is not None else contextlib.nullcontext():
            return self.run.model.weights()


class EvaluateAlong(Callback):
    """`evaluate()` at `evals` evenly spaced points of the (possibly calibrated) schedule."""

    def __init__(self, evals: int, evaluate):
        self.evals, self.evaluate, self.next = evals, evaluate, 1

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if trainer.step >= self.next * trainer.steps / self.evals and trainer.step < trainer.steps:
            self.next += 1
            self.evaluate()


def checkpoint_and_overrides(name: str | None) -> tuple[str, dict]:
    """A preset name (resnet20, resnet56) or a checkpoint path."""
    shared = resolve_dataset("cifar10").parent
    if name is None or name in PRESETS:
        file, overrides = PRESETS[name or "resnet20"]
        return str(shared / file), dict(overrides)
    return name, {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (overrides --minutes)")
    ap.add_argument("--evals", type=int, default=10, help="evaluations along the run")
    ap.add_argument("--set", default="{}", help="JSON overrides of the bench configuration")
    ap.add_argument("--checkpoint", default=None,
                    help=f"a preset ({', '.join(PRESETS)}: the shared checkpoint and the paper's h) or a path")
    ap.add_argument("--save-package", default=None, help="also write the fitted predictor package here")
    ap.add_argument("--averages", default="", help="comma-separated EMA decays to evaluate alongside")
    ap.add_argument("--eval-limit", type=int, default=None, help="score a fixed random subset of the test set")
    args = ap.parse_args()

    ckpt, preset = checkpoint_and_overrides(args.checkpoint)
    sd = load_state_dict(ckpt)
    cfg = FitConfig(**{**BENCH, **preset, "steps": args.steps or 10**6, **json.loads(args.set)})
    run = NernRun(sd, cfg, source_sha256=sha256_file(ckpt))
    network = run.target.module
    images, labels = load_labelled("cifar10-test", run.image_size, args.eval_limit)
    base = evaluate_weights(network, None, images, labels, device=run.device)
    print(f"original top-1 {base['original_top1']:.2f}% on {len(labels)} test images; "
          f"permutation {run.permute_seconds:.1f}s; precision {'bf16' if run.amp else 'fp32'}", flush=True)
    originals = {n: run.target.weights[n] for n in run.model.layout.names}
    extra = Averages(run, list(filter(None, args.averages.split(","))))
    curves_averaged: dict[str, list[list[float]]] = {d: [] for d in extra.averages}
    step_times: list[float] = []
    curve: list[list[float]] = []

    def score(label: str, w: dict[str, torch.Tensor]) -> float:
        m = evaluate_weights(network, w, images, labels, device=run.device)
        err = layer_errors({k: v.cpu() for k, v in w.items()}, originals, total=True)
        print(f"eval  step {run.step:6d}  train {run.train_seconds / 60:6.2f} min  {label:>12}  "
              f"top-1 {m['reconstructed_top1']:6.2f}%  agreement {m['agreement']:6.2f}%  rel.err {err:.4f}",
              flush=True)
        return m["reconstructed_top1"]

    def evaluate() -> float:
        top1 = score(f"ema {cfg.ema_decay:g}" if run.average else "predictor", run.predicted_weights())
        curve.append([round(run.train_seconds, 1), run.step, top1])
        for d in extra.averages:
            label = "predictor" if extra.averages[d] is None else f"ema {d}"
            curves_averaged[d].append([round(run.train_seconds, 1), run.step, score(label, extra.weights(d))])
        return top1

    budget = None if args.steps else args.minutes * 60.0
    Trainer(run, args.steps or 10**6, [Calibrate(run, budget, step_times), extra,
                                       EvaluateAlong(args.evals, evaluate)], log_every=run.log_every).run()
    final = evaluate()
    if args.save_package:
        from nern.package import save_package

        save_package(run.package({"bench_curve": curve, "steps": run.step}), args.save_package)
    line = result_line(run, ckpt, base["original_top1"], final, curve, curves_averaged, step_times)
    print(json.dumps({**line, "eval_images": len(labels), "data_images": len(run.inputs) if run.inputs else 0}))
    return 0


def result_line(run: NernRun, ckpt: str, original_top1: float, final: float, curve: list,
                curves_averaged: dict, step_times: list[float]) -> dict:
    """The bench's JSON line: timings, scores, precision and machine, configuration."""
    median = statistics.median(step_times)
    cuda = run.device.type == "cuda"
    return {
        "median_step_s": round(median, 4),
        "steps_per_s": round(1.0 / median, 2),
        "steps": run.step,
        "train_seconds": round(run.train_seconds, 1),
        "original_top1": original_top1,
        "final_top1": final,
        "curve": curve,
        "final_top1_averaged": {d: c[-1][2] for d, c in curves_averaged.items()},
        "curves_averaged": curves_averaged,
        "threads": torch.get_num_threads(),
        "device": str(run.device),
        "precision": "bf16" if run.amp else "fp32",
        "cuda_graphs": run.cuda_graphs,
        "distill_late_scale": run.config.late_scale(),  # the factor used (the config may leave it to the library)
        "distill_late_from": run.config.late_from(),
        "log_every": run.log_every,
        "cpu": describe_cpu(),
        "gpu": torch.cuda.get_device_name(run.device) if cuda else None,
        "gpu_max_memory_mb": round(torch.cuda.max_memory_allocated(run.device) / 2**20, 1) if cuda else None,
        "checkpoint": Path(ckpt).name,
        "config": run.config.model_dump(mode="json"),
    }


if __name__ == "__main__":
    raise SystemExit(main())
