"""Compare training recipes step for step: each configuration trains for --steps steps and
reports the relative weight error and the reconstruction's top-1 at regular points.

Selection data: a held-out part of the *training* subset (labels used only to score), never the
test set. Steps behave the same on any device, so this runs on a GPU to explore quickly and the
chosen recipe is then timed on the CPU with fit_resnet20.py.

    python benchmarks/fit_sweep.py --steps 3000 --points 6 \
        --grid '[{"emb_base": 0.76}, {"emb_base": 1.2}]' [--base '{"w_kd": 0}']
Prints one JSON line per evaluation point and a summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nern import FitConfig, load_state_dict  # noqa: E402
from nern.data import load_images, resolve_dataset  # noqa: E402
from nern.evaluate import evaluate_weights, layer_errors  # noqa: E402
from nern.train import NernRun  # noqa: E402
from nern.trainer import Callback, Trainer  # noqa: E402


class Points(Callback):
    """Score the reconstruction every `every` steps and at the end (one JSON line each)."""

    def __init__(self, run: NernRun, every: int, images, labels, overrides: dict, out: str | None):
        self.run, self.every, self.data, self.overrides, self.out = run, every, (images, labels), overrides, out
        self.originals = {n: run.target.weights[n] for n in run.model.layout.names}
        self.curve: list[tuple[int, float, float]] = []

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        step = trainer.step
        if step % self.every and step != trainer.steps:
            return
        run = self.run
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        w = run.predicted_weights()
        m = evaluate_weights(run.target.module, w, *self.data, device=run.device)
        err = layer_errors({k: v.cpu() for k, v in w.items()}, self.originals, total=True)
        point = {"cfg": self.overrides, "step": step, "s": round(run.train_seconds, 1), "rel_err": err,
                 "top1": m["reconstructed_top1"], "agree": m["agreement"],
                 "rec": round(losses["rec"], 4), "kd": round(losses.get("kd", 0), 4)}
        print(json.dumps(point), flush=True)
        if self.out:
            with open(self.out, "a") as f:
                f.write(json.dumps(point) + "\n")
        self.curve.append((step, m["reconstructed_top1"], err))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--grid", required=True, help="JSON list of FitConfig overrides")
    ap.add_argument("--base", default="{}", help="JSON overrides applied to every configuration")
    ap.add_argument("--holdout", type=int, default=2000)
    ap.add_argument("--out", default=None, help="also append JSON lines to this file")
    args = ap.parse_args()

    ckpt = args.checkpoint or str(resolve_dataset("cifar10").parent / "resnet20-12fca82f.th")
    sd = load_state_dict(ckpt)
    images, labels = load_images("cifar10", 32)
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(99))[: args.holdout]
    images, labels = images[keep], labels[keep]
    rows = []
    for overrides in json.loads(args.grid):
        cfg = FitConfig(**{"steps": args.steps, **json.loads(args.base), **overrides})
        run = NernRun(sd, cfg, source_sha256="sweep")
        points = Points(run, max(1, args.steps // args.points), images, labels, overrides, args.out)
        Trainer(run, args.steps, [points]).run()  # only train_step counts as time: scoring does not
        curve = points.curve
        rows.append((overrides, curve))
    print("\nsummary (step: top1 / rel_err)")
    for overrides, curve in rows:
        print(json.dumps(overrides), " | ".join(f"{s}: {t:.1f}/{e:.3f}" for s, t, e in curve))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
