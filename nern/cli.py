"""The `nern` command line.

    nern fit CHECKPOINT [--arch NAME] [--steps N] [--batch-size B] [--hidden H]
             [--data PATH|noise|cifar10] [--permute none|infilter|crossfilter] --out PACKAGE
    nern evaluate PACKAGE --checkpoint CHECKPOINT --data PATH [--json]
    nern reconstruct PACKAGE --checkpoint CHECKPOINT --out FILE.safetensors
    nern targets

The compression and importance commands live in `nern.cli_compression`. Other packages add
commands through the entry-point group `nern.commands` (a `register(subparsers)` function): the
service registers serve, worker, keys, jobs and demo there, so the library names nothing of it.
Every user error prints one line on stderr (`nern: error: ...`) and exits with status 2, and no
output file is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .cli_options import OneLineParser, add_model_flags, model_values
from .config import FitConfig

EXIT_USER_ERROR = 2
COMMAND_GROUP = "nern.commands"  # entry points: register(subparsers) functions of other packages


def _fail(msg: str) -> int:
    print(f"nern: error: {msg}", file=sys.stderr)
    return EXIT_USER_ERROR


# ---- fit --------------------------------------------------------------------------------

def add_fit_options(p: argparse.ArgumentParser) -> None:
    """The training flags: one per FitConfig field (shared generator with `nern jobs submit`)."""
    add_model_flags(p.add_argument_group("fit settings (FitConfig)"), FitConfig)


def config_from_args(args: argparse.Namespace) -> FitConfig:
    return FitConfig(**model_values(args, FitConfig))


def _progress_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=None)

    def on_progress(p) -> None:
        if p.stage == "smoothing":
            bar.set_description("smoothing")
        elif p.stage == "training":
            bar.set_description("training")
            bar.n = p.step
            bar.set_postfix({k: f"{v:.4g}" for k, v in p.losses.items() if k != "lr"}, refresh=False)
            bar.refresh()
        elif p.stage == "evaluating":
            bar.set_description("evaluating")
            bar.refresh()

    return bar, on_progress


def cmd_fit(args: argparse.Namespace) -> int:
    from .checkpoint import load_state_dict
    from .io import sha256_file
    from .package import save_package
    from .train import fit

    out = Path(args.out)
    if out.exists() and out.is_dir():
        return _fail(f"--out {out} is a directory; give a file name")
    if not out.parent.exists():
        return _fail(f"--out: folder {out.parent} does not exist")
    cfg = config_from_args(args)
    if cfg.eval_data is None and args.evaluate:
        cfg = cfg.model_copy(update={"eval_data": "cifar10-test"})
    sd = load_state_dict(args.checkpoint)
    bar, on_progress = _progress_bar(cfg.steps)
    try:
        result = fit(sd, cfg, work_dir=args.work_dir, on_progress=on_progress,
                     source_sha256=sha256_file(args.checkpoint))
    finally:
        bar.close()
    size = save_package(result.package, out)
    s = result.summary
    print(f"arch {s['arch']}: {s['steps']} steps in {s['train_seconds']:.1f}s, "
          f"relative weight error {s['relative_weight_error']:.4f}")
    if "reconstructed_top1" in s:
        print(f"top-1 original {s['original_top1']:.2f}%  reconstructed {s['reconstructed_top1']:.2f}%  "
              f"agreement {s['agreement']:.2f}%  ({s['eval_images']} images)")
    print(f"wrote {out} ({size} bytes)")
    return 0


# ---- evaluate / reconstruct ---------------------------------------------------------------

def _load_pair(args: argparse.Namespace):
    from .checkpoint import load_state_dict
    from .io import sha256_file
    from .package import load_package

    package = load_package(args.package)
    sd = load_state_dict(args.checkpoint)
    want = package.meta.get("source_sha256")
    if want and want != sha256_file(args.checkpoint):
        logging.getLogger("nern").warning(
            "checkpoint sha256 differs from the one the package was fitted to; reconstructing anyway"
        )
    return package, sd


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_labelled
    from .evaluate import evaluate_package

    package, sd = _load_pair(args)
    data = load_labelled(args.data, package.image_size, args.limit)
    metrics = evaluate_package(package, sd, data)
    metrics["arch"] = package.arch
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"top-1 original {metrics['original_top1']:.2f}%  reconstructed {metrics['reconstructed_top1']:.2f}%  "
              f"agreement {metrics['agreement']:.2f}%  ({metrics['eval_images']} images)")
        print(f"relative weight error {metrics['relative_weight_error']:.4f}")
        for name, err in metrics["layer_errors"].items():
            print(f"  {name:40s} {err:.4f}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from .io import atomic_write
    from .package import reconstruct

    out = Path(args.out)
    if out.suffix != ".safetensors":
        return _fail("--out must end in .safetensors")
    if not out.parent.exists():
        return _fail(f"--out: folder {out.parent} does not exist")
    package, sd = _load_pair(args)
    rec = reconstruct(package, sd)
    atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in rec.items()}, str(tmp)))
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(rec)} tensors)")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import get_target_spec, list_targets

    for name in list_targets():
        print(f"{name:12s} {get_target_spec(name).description}")
    return 0


# ---- entry point ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nern", description="NeRN: neural representations of CNN weights")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit a predictor to a checkpoint and write the package")
    p.add_argument("checkpoint")
    add_fit_options(p)
    p.add_argument("--out", required=True, help="package file to write")
    p.add_argument("--work-dir", default=None, help="folder for resumable training state")
    p.add_argument("--evaluate", action="store_true", help="score on cifar10-test when --eval-data is unset")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("evaluate", help="score a package's reconstruction against the original")
    p.add_argument("package")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="labelled .npz (or cifar10-test)")
    p.add_argument("--limit", type=int, default=None, help="a fixed random subset of N images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reconstruct", help="write the reconstructed state_dict as safetensors")
    p.add_argument("package")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("targets", help="list the registered architectures")
    p.set_defaults(func=cmd_targets)

    from . import cli_compression

    cli_compression.register(sub)
    for entry in entry_points(group=COMMAND_GROUP):
        try:
            register = entry.load()
        except Exception as e:  # a broken plugin must not take the library's commands down with it
            logging.getLogger("nern").warning("commands %r (%s) not loaded: %s", entry.name, entry.value, e)
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from .errors import NernError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except NernError as e:
        return _fail(str(e))
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        return _fail(f"invalid {loc}: {err['msg']}")
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
