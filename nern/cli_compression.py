"""The `nern importance`, `nern compress` and `nern compress-sweep` commands (registered by
`nern.cli`).

    nern importance PACKAGE --checkpoint CKPT --data cifar10-test --out DIR [--limit N]
    nern compress PACKAGE --prune 0.5 --quantize int8 [--finetune-steps N --checkpoint CKPT] --out SMALL
    nern compress-sweep PACKAGE --checkpoint CKPT --data cifar10-test --out DIR [--limit N]

Output folders are assembled in a temporary sibling and renamed into place at the end, and the
package is written atomically, so a failed command leaves no partial output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError("fractions must lie in [0, 1)")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@contextlib.contextmanager
def _output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` if the block succeeds (else is removed)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _eval_data(data: str, limit: int | None, package):
    from .data import load_labelled

    return load_labelled(data, package.image_size, limit)


def _bar(total: int | None, desc: str, unit: str):
    """A progress bar on a terminal (none when stderr is not one)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None)


def _check_out_file(out: Path) -> None:
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist")


# ---- importance -------------------------------------------------------------------------------

def cmd_importance(args: argparse.Namespace) -> int:
    from .cli import _load_pair
    from .evaluate import top1
    from .importance import PRUNING_METHODS, importance_maps, pruning_curve, pruning_table
    from .plots import importance_heatmap, pruning_curve_figure

    unknown = sorted(set(args.methods) - set(PRUNING_METHODS))
    if unknown:
        raise ConfigError(f"unknown pruning method {unknown[0]!r} (use {', '.join(PRUNING_METHODS)})")
    package, sd = _load_pair(args)
    model = package.original_network(sd)
    images, labels = _eval_data(args.data, args.limit, package)
    maps = importance_maps(package, sd)
    with _output_dir(args.out) as tmp:
        maps.save(tmp)
        heat = tmp / "heatmaps"
        heat.mkdir()
        for i, name in enumerate(maps.layers):
            importance_heatmap(maps.kernel_error[name], heat / f"{i:02d}_{name.removesuffix('.weight')}.png",
                               name.removesuffix(".weight"))
        with _bar(len(args.fractions), "pruning curve", "fraction") as bar:
            rows = pruning_curve(model, sd, maps, images, labels, fractions=args.fractions,
                                 methods=args.methods, seed=args.seed, on_row=lambda _row: bar.update())
        pruning_curve_figure(rows, tmp / "pruning_curve.png")
        result = {"eval_images": int(labels.shape[0]), "original_top1": top1(model, None, images, labels),
                  "curve": rows, "layers": maps.summary()}
        (tmp / "pruning_curve.json").write_text(json.dumps(result, indent=2))
        table = pruning_table(rows, int(labels.shape[0]))
        (tmp / "pruning_curve.md").write_text(table + "\n")
    print(table)
    print(f"wrote {args.out}: importance.safetensors + importance.json, {len(maps.layers)} heatmaps, "
          "pruning_curve.png/.json/.md")
    return 0


# ---- compress ----------------------------------------------------------------------------------

def cmd_compress(args: argparse.Namespace) -> int:
    from .checkpoint import load_state_dict
    from .compress import compress_package
    from .package import load_package, save_package

    out = Path(args.out)
    _check_out_file(out)
    if args.finetune_steps and not args.checkpoint:
        raise ConfigError("--finetune-steps needs --checkpoint (the original weights are the targets)")
    if args.data and not args.checkpoint:
        raise ConfigError("--data needs --checkpoint to evaluate the reconstruction")
    package = load_package(args.package)
    sd = load_state_dict(args.checkpoint) if args.checkpoint else None
    with _bar(args.finetune_steps, "fine-tuning", "step") as bar:
        small, report = compress_package(
            package, prune=args.prune, quantize=args.quantize, finetune_steps=args.finetune_steps,
            original_state_dict=sd, finetune_lr=args.finetune_lr, sparse=False if args.dense else None,
            threads=args.threads, on_step=lambda _step, _losses: bar.update(),
        )
    if args.data:
        from .evaluate import evaluate_package

        data = _eval_data(args.data, args.limit, package)
        report["top1_before"] = evaluate_package(package, sd, data)["reconstructed_top1"]
        report["top1_after"] = evaluate_package(small, sd, data)["reconstructed_top1"]
        report["eval_images"] = int(data[1].shape[0])
    size = save_package(small, out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        kept = report["matrix_weights_kept"] / max(1, report["matrix_weights"])
        print(f"predictor: {kept:.1%} of matrix weights kept, {report['quantize']}, "
              f"{report['predictor_bytes']:,} bytes; permutation {report['permutation_bytes']:,}; "
              f"header {report['header_bytes']:,}")
        if "top1_after" in report:
            print(f"top-1 {report['top1_before']:.2f}% -> {report['top1_after']:.2f}% "
                  f"({report['eval_images']} images)")
        print(f"wrote {out} ({size:,} bytes; was {report['source_package_bytes']:,}; "
              f"unmodeled tensors not included: {report['unmodeled_bytes']:,})")
    return 0


# ---- compress-sweep ------------------------------------------------------------------------------

def cmd_compress_sweep(args: argparse.Namespace) -> int:
    from .cli import _load_pair
    from .compress import compression_sweep, sweep_table
    from .plots import sweep_figure

    package, sd = _load_pair(args)
    images, labels = _eval_data(args.data, args.limit, package)
    with _output_dir(args.out) as tmp:
        with _bar(None, "compression sweep", "row") as bar:
            sweep = compression_sweep(package, sd, images, labels, fractions=args.fractions, dtypes=args.dtypes,
                                      finetune_steps=args.finetune_steps, threads=args.threads,
                                      on_row=lambda _row: bar.update())
        table = sweep_table(sweep)
        (tmp / "sweep.json").write_text(json.dumps(sweep, indent=2))
        (tmp / "sweep.md").write_text(table + "\n")
        sweep_figure(sweep, tmp / "sweep.png")
    print(table)
    print(f"wrote {args.out}: sweep.json, sweep.md, sweep.png")
    return 0


# ---- registration ---------------------------------------------------------------------------------

def register(subparsers) -> None:
    from .config import DEFAULT_PRUNING_FRACTIONS as DEFAULT_FRACTIONS
    from .config import DEFAULT_SWEEP_DTYPES, DEFAULT_SWEEP_FRACTIONS, PRUNING_METHODS, QUANTIZE_CHOICES

    def fractions_default(values) -> str:
        return ",".join(f"{v:g}" for v in values)

    p = subparsers.add_parser("importance", help="importance maps of a package, and the pruning curve")
    p.add_argument("package")
    p.add_argument("--checkpoint", required=True, help="the original checkpoint the package was fitted to")
    p.add_argument("--data", required=True, help="labelled .npz or a dataset name (cifar10-test)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--limit", type=int, default=None, help="score on a fixed random subset of N images")
    p.add_argument("--fractions", type=_fractions, default=list(DEFAULT_FRACTIONS),
                   help=f"pruned fractions (default {fractions_default(DEFAULT_FRACTIONS)})")
    p.add_argument("--methods", type=_names, default=list(PRUNING_METHODS),
                   help=f"pruning methods (default {','.join(PRUNING_METHODS)})")
    p.add_argument("--seed", type=int, default=0, help="seed of random pruning")
    p.set_defaults(func=_checked(cmd_importance))

    p = subparsers.add_parser("compress", help="prune / fine-tune / quantise a package's predictor")
    p.add_argument("package")
    p.add_argument("--out", required=True, help="package file to write")
    p.add_argument("--prune", type=float, default=0.0, help="fraction of the predictor's weights to zero")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune the pruned predictor N steps")
    p.add_argument("--finetune-lr", type=float, default=None, help="default: a tenth of the fit's lr")
    p.add_argument("--checkpoint", default=None, help="the original checkpoint (fine-tuning, evaluation)")
    p.add_argument("--data", default=None, help="evaluate before/after on this labelled data")
    p.add_argument("--limit", type=int, default=None, help="evaluate on a fixed random subset of N images")
    p.add_argument("--dense", action="store_true", help="never store pruned matrices sparsely")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_checked(cmd_compress))

    p = subparsers.add_parser("compress-sweep", help="accuracy-versus-bytes table and plot, with baselines")
    p.add_argument("package")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="labelled .npz or a dataset name (cifar10-test)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--limit", type=int, default=None, help="score on a fixed random subset of N images")
    p.add_argument("--fractions", type=_fractions, default=list(DEFAULT_SWEEP_FRACTIONS),
                   help=f"predictor prune fractions (default {fractions_default(DEFAULT_SWEEP_FRACTIONS)})")
    p.add_argument("--dtypes", type=_names, default=list(DEFAULT_SWEEP_DTYPES),
                   help=f"predictor dtypes (default {','.join(DEFAULT_SWEEP_DTYPES)})")
    p.add_argument("--finetune-steps", type=int, default=0, help="fine-tune each pruned predictor N steps")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_checked(cmd_compress_sweep))


def _checked(func):
    """Validate the numeric flags shared by the commands before any work starts."""

    def run(args: argparse.Namespace) -> int:
        if getattr(args, "limit", None) is not None and args.limit < 1:
            raise ConfigError("--limit must be at least 1")
        if getattr(args, "finetune_steps", 0) < 0:
            raise ConfigError("--finetune-steps must not be negative")
        if hasattr(args, "prune") and not 0.0 <= args.prune < 1.0:
            raise ConfigError(f"--prune must lie in [0, 1), got {args.prune}")
        return func(args)

    return run


__all__ = ["register"]
