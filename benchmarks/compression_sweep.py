"""Meta-compression sweep on the bench ResNet20: accuracy versus bytes, with honest baselines.

    python benchmarks/compression_sweep.py --package resnet20.nern         # an existing bench fit
    python benchmarks/compression_sweep.py --steps 3000 --save-package r20.nern   # fit first (BENCH)
    python benchmarks/compression_sweep.py --steps 20 --limit 500          # a quick smoke run

The package is either read (`--package`, e.g. from `nern fit ... --out`) or fitted with the
bench recipe of benchmarks/fit_resnet20.py for --steps. Then every (predictor prune fraction ×
dtype) is scored next to the original's conv weights in fp32/fp16/int8 and magnitude-pruned at
each NeRN row's byte budget, all on the same images (default: the full CIFAR-10 test set).
Prints the table (Markdown) and, as its last line, one JSON object; --out also writes
sweep.json, sweep.md and sweep.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from fit_resnet20 import BENCH  # noqa: E402

from nern import FitConfig, load_state_dict  # noqa: E402
from nern.compress import (  # noqa: E402
    DEFAULT_SWEEP_DTYPES,
    DEFAULT_SWEEP_FRACTIONS,
    compression_sweep,
    sweep_table,
)
from nern.data import load_labelled, resolve_dataset  # noqa: E402
from nern.io import sha256_file  # noqa: E402
from nern.package import Package, load_package, save_package  # noqa: E402
from nern.train import fit  # noqa: E402


def common_arguments(ap: argparse.ArgumentParser) -> None:
    """Flags shared with benchmarks/importance_curve.py."""
    ap.add_argument("--package", default=None, help="a fitted package to reuse (skips the bench fit)")
    ap.add_argument("--steps", type=int, default=3000, help="bench fit length when --package is not given")
    ap.add_argument("--save-package", default=None, help="write the bench fit's package here")
    ap.add_argument("--checkpoint", default=None, help="default: resnet20-12fca82f.th beside the data")
    ap.add_argument("--data", default="cifar10-test", help="labelled evaluation data")
    ap.add_argument("--limit", type=int, default=None, help="a fixed random subset of N images")
    ap.add_argument("--out", default=None, help="folder for the JSON, Markdown and PNG outputs")


def obtain_package(args: argparse.Namespace) -> tuple[Package, dict, str]:
    """(package, original state_dict, checkpoint path): read --package or run the bench fit."""
    ckpt = args.checkpoint or str(resolve_dataset("cifar10").parent / "resnet20-12fca82f.th")
    sd = load_state_dict(ckpt)
    if args.package:
        return load_package(args.package), sd, ckpt
    cfg = FitConfig(**{**BENCH, "steps": args.steps})
    t0 = time.perf_counter()

    def on_progress(p) -> None:
        if p.stage == "training" and (p.step % 100 == 0 or p.step == p.total_steps):
            print(f"fit step {p.step}/{p.total_steps}  {p.elapsed_s:7.1f}s  "
                  f"rec {p.losses.get('rec', float('nan')):.4g}", flush=True)

    result = fit(sd, cfg, source_sha256=sha256_file(ckpt), on_progress=on_progress)
    print(f"bench fit: {args.steps} steps in {time.perf_counter() - t0:.0f}s, "
          f"relative weight error {result.summary['relative_weight_error']:.4f}", flush=True)
    if args.save_package:
        save_package(result.package, args.save_package)
    return result.package, sd, ckpt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(ap)
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in DEFAULT_SWEEP_FRACTIONS))
    ap.add_argument("--dtypes", default=",".join(DEFAULT_SWEEP_DTYPES))
    ap.add_argument("--finetune-steps", type=int, default=0, help="fine-tune each pruned predictor N steps")
    args = ap.parse_args()

    package, sd, _ = obtain_package(args)
    images, labels = load_labelled(args.data, 32, args.limit)
    t0 = time.perf_counter()
    sweep = compression_sweep(
        package, sd, images, labels,
        fractions=[float(f) for f in args.fractions.split(",")], dtypes=args.dtypes.split(","),
        finetune_steps=args.finetune_steps,
        on_row=lambda r: print(f"  {r['method']:17s} {r['setting']:28s} {r['bytes']:>10,d} B  "
                               f"top-1 {r['top1']:6.2f}", flush=True),
    )
    table = sweep_table(sweep)
    print()
    print(table)
    if args.out:
        from nern.plots import sweep_figure

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(sweep, indent=2))
        (out / "sweep.md").write_text(table + "\n")
        sweep_figure(sweep, out / "sweep.png")
    sweep["sweep_seconds"] = round(time.perf_counter() - t0, 1)
    sweep["package_summary"] = {k: package.meta["summary"].get(k) for k in ("steps", "relative_weight_error")}
    print(json.dumps(sweep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
