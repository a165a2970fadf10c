"""Importance maps of the bench ResNet20 fit, and the pruning curve they predict.

    python benchmarks/importance_curve.py --package resnet20.nern          # an existing bench fit
    python benchmarks/importance_curve.py --steps 3000                     # fit first (BENCH)
    python benchmarks/importance_curve.py --steps 20 --limit 500           # a quick smoke run

Zeroes 0–90 % of the original's modeled conv weights (ranked globally) by largest relative
reconstruction error, by smallest magnitude and at random, and scores top-1 on the same images
(default: the full CIFAR-10 test set). Prints the table and per-layer error statistics, and as
its last line one JSON object; --out also writes the maps, the heatmaps and the curve's PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from compression_sweep import common_arguments, obtain_package  # noqa: E402

from nern.data import load_labelled  # noqa: E402
from nern.importance import DEFAULT_FRACTIONS, importance_maps, pruning_curve, pruning_table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap)
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in DEFAULT_FRACTIONS))
    ap.add_argument("--seed", type=int, default=0, help="random pruning's seed")
    args = ap.parse_args()

    package, sd, _ = obtain_package(args)
    images, labels = load_labelled(args.data, 32, args.limit)
    model = package.original_network(sd)
    maps = importance_maps(package, sd)
    summary = maps.summary()
    print("relative reconstruction error per layer (mean / median):")
    for name, s in summary.items():
        print(f"  {name:26s} {s['mean']:9.3f} {s['median']:7.3f}")
    t0 = time.perf_counter()
    rows = pruning_curve(model, sd, maps, images, labels, fractions=[float(f) for f in args.fractions.split(",")],
                         seed=args.seed, on_row=lambda r: print(f"  {r}", flush=True))
    table = pruning_table(rows, int(labels.shape[0]))
    print()
    print(table)
    if args.out:
        from nern.plots import importance_heatmap, pruning_curve_figure

        out = Path(args.out)
        maps.save(out)
        (out / "heatmaps").mkdir(exist_ok=True)
        for i, name in enumerate(maps.layers):
            importance_heatmap(maps.kernel_error[name], out / "heatmaps" / f"{i:02d}_{name.removesuffix('.weight')}.png",
                               name.removesuffix(".weight"))
        pruning_curve_figure(rows, out / "pruning_curve.png")
        (out / "pruning_curve.md").write_text(table + "\n")
    print(json.dumps({"eval_images": int(labels.shape[0]), "curve": rows, "layers": summary,
                      "curve_seconds": round(time.perf_counter() - t0, 1),
                      "package_summary": {k: package.meta["summary"].get(k) for k in ("steps", "relative_weight_error")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
