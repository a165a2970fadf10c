"""Recipe experiments for short CPU schedules (issue 7, part 3): top-1 per step on held-out images.

Selection data never touches the test set. The 10,000-image training subset is split once
(fixed seed) into 8,000 distillation images and 2,000 held-out images that are scored; the
held-out images exclude the 1,000 images of the shipped sample (nern/assets), so the same
held-out set also scores runs that distil on the sample (what the demo does on a fresh clone).
The two split files are written under /tmp, never into the repository.

    python benchmarks/recipe_experiments.py --steps 600 --data split \
        --name lr6e-3 --set '{"lr": 6e-3}' --out docs/results/recipe_experiments.jsonl
    python benchmarks/recipe_experiments.py --steps 600 --data sample --set '{...}'
    python benchmarks/recipe_experiments.py --steps 600 --data split --eval test --set '{...}'

Prints one JSON line per run: recipe (the FitConfig overrides), data, steps, held-out top-1,
agreement with the original network, relative weight error, median step seconds (noisy on a
shared machine) and the step's FLOP count (analytic, see `step_gflop`), plus the top-1 at the
intermediate evaluation points (--eval-every), and the mean KL divergence of the reconstruction's
outputs from the original's on the scored images (`kl`, a score that does not saturate). Uses the
library's public API, plus `normalize` and `run_with_weights` for the KL. While it trains, a line
with the step, the recent seconds per step and the ETA goes to stderr every --progress-every steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit_resnet20 import PRESETS  # noqa: E402  (this folder is on sys.path when run as a script)

from nern import (  # noqa: E402
    FitConfig,
    evaluate_weights,
    fit,
    load_state_dict,
    load_target,
    predict_weights,
    sha256_file,
)
from nern.conv_layout import as_activation  # noqa: E402
from nern.data import load_labelled, normalize  # noqa: E402
from nern.reconstruct import run_with_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
SAMPLE = ROOT / "nern" / "assets" / "cifar10_sample_train.npz"
SPLIT_DIR = Path("/tmp/nern_recipe_split")
SPLIT_SEED = 20261128


def make_split(holdout: int = 2000) -> tuple[Path, Path]:
    """/tmp files: train (8,000 images incl. the shipped sample) and held-out (2,000, disjoint
    from the sample). Deterministic: same seed, same files."""
    train_p, hold_p = SPLIT_DIR / "train8k.npz", SPLIT_DIR / "holdout2k.npz"
    if train_p.is_file() and hold_p.is_file():
        return train_p, hold_p
    SPLIT_DIR.mkdir(parents=True, exist_ok=True)
    with np.load(SHARED / "cifar10_train_subset.npz") as z:
        images, labels = z["images"], z["labels"]
    with np.load(SAMPLE) as z:
        sample = {x.tobytes() for x in z["images"]}
    in_sample = np.array([x.tobytes() in sample for x in images])
    rng = np.random.default_rng(SPLIT_SEED)
    candidates = rng.permutation(np.flatnonzero(~in_sample))  # class-major file: shuffle
    hold = np.sort(candidates[:holdout])
    train = np.setdiff1d(np.arange(len(labels)), hold)
    train = train[rng.permutation(len(train))]
    np.savez(train_p, images=images[train], labels=labels[train])
    np.savez(hold_p, images=images[hold], labels=labels[hold])
    return train_p, hold_p


def resnet_gflop_per_image(state_dict: dict) -> float:
    """Forward GFLOP of one 32×32 image through the target network (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = load_target(state_dict)[0].eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops() / 1e9


def predictor_gflop_per_kernel(cfg: FitConfig, k2: int = 9) -> float:
    """Forward GFLOP of the predictor for one kernel (multiply-add = 2 FLOP)."""
    dims = [cfg.embedding_dim] + [cfg.hidden] * (cfg.layers - 1) + [k2]
    return 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:])) / 1e9


def step_gflop(cfg: FitConfig, net_gflop: float, num_kernels: int) -> float:
    """FLOP of one training step: the predictor forward+backward (3× forward) over the kernels
    that carry gradients, the no-grad re-prediction of all kernels every `repredict_every`
    steps (with kernel batches), the teacher forward (1×) and the student forward+backward
    (3×: input and weight gradients) on batch_size images. With all kernels every step the
    first layer is computed per coordinate (`nern.model.SeparableFirstLayer`): its products
    over ~150 distinct coordinates instead of every kernel are left out (its forward and weight
    gradient; the embedding needs no input gradient, so the other layers count 3×)."""
    p = predictor_gflop_per_kernel(cfg)
    kb = cfg.kernel_batch_size
    if kb == 0 or kb >= num_kernels:
        pred = 3 * (p - 2 * cfg.embedding_dim * cfg.hidden / 1e9) * num_kernels
    else:
        pred = 3 * p * kb + p * num_kernels / cfg.repredict_every
    distill = cfg.w_kd > 0 or cfg.w_fmd > 0
    net = 4 * net_gflop * cfg.batch_size if distill else 0.0
    return pred + net


@torch.inference_mode()
def logit_kl(net: torch.nn.Module, weights: dict, images_u8: torch.Tensor, batch: int = 1000) -> float:
    """Mean KL(original ‖ reconstruction) of the two networks' softmax outputs, nats per image.

    A continuous fidelity score: held-out top-1 on training images saturates near the original's
    (99.75 %) long before the fit stops improving, while this keeps falling."""
    net.eval()
    total = 0.0
    for s in range(0, images_u8.shape[0], batch):
        x = as_activation(normalize(images_u8[s : s + batch]))
        lo = torch.log_softmax(net(x).float(), 1)
        lr = torch.log_softmax(run_with_weights(net, weights, x).float(), 1)
        total += float((lo.exp() * (lo - lr)).sum())
    return round(total / images_u8.shape[0], 6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--data", choices=["split", "sample"], default="split",
                    help="distil on the 8,000-image split or on the shipped 1,000-image sample")
    ap.add_argument("--eval", choices=["holdout", "test"], default="holdout",
                    help="score on the 2,000 held-out training images, or on the full test set (once, at the end)")
    ap.add_argument("--set", default="{}", help="JSON FitConfig overrides (the recipe)")
    ap.add_argument("--name", default=None, help="short label for the table")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--progress-every", type=int, default=1000,
                    help="print step, recent seconds per step and the ETA to stderr every N steps (0: never)")
    ap.add_argument("--also-test", action="store_true",
                    help="after the held-out score, also score the fitted package once on the full test set")
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    ap.add_argument("--checkpoint", choices=sorted(PRESETS), default="resnet20",
                    help="the shared checkpoint and the paper's predictor width for it (fit_resnet20.py's presets)")
    args = ap.parse_args()

    ckpt_file, preset = PRESETS[args.checkpoint]
    ckpt = SHARED / ckpt_file
    sd = load_state_dict(str(ckpt))
    train_p, hold_p = make_split()
    data = str(train_p) if args.data == "split" else str(SAMPLE)
    eval_data = str(hold_p) if args.eval == "holdout" else str(SHARED / "cifar10_test.npz")
    overrides = json.loads(args.set)
    cfg = FitConfig(**{"steps": args.steps, "data": data, "eval_data": eval_data,
                       "eval_every": args.eval_every, "threads": args.threads, **preset, **overrides})

    step_times: list[float] = []
    last = [0.0]
    curve: list[dict] = []

    def on_progress(p) -> None:
        if p.stage == "training":
            step_times.append(p.elapsed_s - last[0])
            last[0] = p.elapsed_s
            if args.progress_every and p.step % args.progress_every == 0:
                recent = statistics.median(step_times[-50:])
                print(json.dumps({"name": args.name, "step": p.step, "s_per_step": round(recent, 4),
                                  "eta_min": None if p.eta_s is None else round(p.eta_s / 60, 1)}),
                      file=sys.stderr, flush=True)

    def on_eval(step: int, _seconds: float, metrics: dict) -> None:
        curve.append({"step": step, "top1": metrics.get("reconstructed_top1")})
        print(json.dumps({"name": args.name, **curve[-1]}), file=sys.stderr, flush=True)

    t0 = time.time()
    result = fit(sd, cfg, on_progress=on_progress, on_eval=on_eval, source_sha256=sha256_file(str(ckpt)))
    s = result.summary
    num_kernels = sum(w.shape[0] * w.shape[1] for n, w in sd.items()
                      if n in s["layer_errors"])
    net, weights = load_target(sd)[0], predict_weights(result.package)
    line = {
        "name": args.name,
        "checkpoint": args.checkpoint,
        "recipe": overrides,
        "data": args.data,
        "eval": args.eval,
        "steps": s["steps"],
        "top1": s.get("reconstructed_top1"),
        "agreement": s.get("agreement"),
        "kl": logit_kl(net, weights, load_labelled(eval_data, 32)[0]),
        "original_top1": s.get("original_top1"),
        "rel_err": s["relative_weight_error"],
        "precision": s["precision"],
        "median_step_s": round(statistics.median(step_times[5:] or step_times), 4),
        "step_gflop": round(step_gflop(cfg, resnet_gflop_per_image(sd), num_kernels), 2),
        "train_s": s["train_seconds"],
        "wall_s": round(time.time() - t0, 1),
        "final_losses": {k: round(v, 5) for k, v in s["final_losses"].items() if k != "step"},
        "curve": curve,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(line), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    if args.also_test:
        images, labels = load_labelled(str(SHARED / "cifar10_test.npz"), 32)
        m = evaluate_weights(net, weights, images, labels)
        test = {**line, "eval": "test", "top1": m["reconstructed_top1"], "agreement": m["agreement"],
                "kl": logit_kl(net, weights, images),
                "original_top1": m["original_top1"], "eval_images": m["eval_images"], "curve": []}
        print(json.dumps(test), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(test) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
