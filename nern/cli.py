"""The `nern` command line.

    nern fit CHECKPOINT [--arch NAME] [--steps N] [--batch-size B] [--hidden H]
             [--data PATH|noise|cifar10] [--permute none|infilter|crossfilter] --out PACKAGE
    nern evaluate PACKAGE --checkpoint CHECKPOINT --data PATH [--json]
    nern reconstruct PACKAGE --checkpoint CHECKPOINT --out FILE.safetensors
    nern targets

Service commands (serve, worker, keys, jobs) are registered by `api.cli`; the compression and
importance commands by `nern.cli_compression`. Every user error prints one line on stderr and
exits non-zero, and no output file is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .config import FitConfig

EXIT_USER_ERROR = 2


def _fail(msg: str) -> int:
    print(f"nern: error: {msg}", file=sys.stderr)
    return EXIT_USER_ERROR


# ---- fit --------------------------------------------------------------------------------

FIT_FLAGS = {
    # flag: (FitConfig field, type)
    "--arch": ("arch", str),
    "--steps": ("steps", int),
    "--batch-size": ("batch_size", int),
    "--kernel-batch-size": ("kernel_batch_size", int),
    "--hidden": ("hidden", int),
    "--layers": ("layers", int),
    "--emb-levels": ("emb_levels", int),
    "--emb-base": ("emb_base", float),
    "--lr": ("lr", float),
    "--w-rec": ("w_rec", float),
    "--w-kd": ("w_kd", float),
    "--w-fmd": ("w_fmd", float),
    "--data": ("data", str),
    "--eval-data": ("eval_data", str),
    "--eval-limit": ("eval_limit", int),
    "--seed": ("seed", int),
    "--device": ("device", str),
    "--threads": ("threads", int),
    "--checkpoint-every": ("checkpoint_every", int),
    "--ema-decay": ("ema_decay", float),
}


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """The training flags shared by `nern fit` and `nern jobs submit`."""
    for flag, (field, typ) in FIT_FLAGS.items():
        info = FitConfig.model_fields[field]
        p.add_argument(flag, dest=field, type=typ, default=None,
                       help=f"{info.description or field} (default: {info.default})")
    p.add_argument("--permute", choices=["none", "infilter", "crossfilter"], default=None,
                   help="kernel permutation smoothing (default: crossfilter)")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true", default=None,
                     help="bf16 autocast for the predictor (default: only where bf16 is native)")
    amp.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 predictor products")


def config_from_args(args: argparse.Namespace) -> FitConfig:
    fields = [f for f, _ in FIT_FLAGS.values()] + ["permute", "amp"]
    values = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    return FitConfig(**values)


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
    from .checkpoint import load_state_dict, sha256_file
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
    from .checkpoint import load_state_dict, sha256_file
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
    from .data import fixed_subset, load_images
    from .evaluate import evaluate_weights, layer_errors
    from .package import reconstruct
    from .targets import create_target
    from .train import NATIVE_IMAGE_SIZE

    package, sd = _load_pair(args)
    rec = reconstruct(package, sd)
    target = package.meta["target"]
    model = create_target(target["arch"], **target["kwargs"])
    model.load_state_dict(sd, strict=False)
    images, labels = load_images(args.data, NATIVE_IMAGE_SIZE.get(target["arch"], 32))
    if labels is None:
        return _fail(f"--data {args.data} has no labels; evaluation needs a labelled .npz")
    images, labels = fixed_subset(images, labels, args.limit)
    predicted = {d["name"]: rec[d["name"]] for d in package.meta["layers"]}
    metrics = evaluate_weights(model, predicted, images, labels)
    metrics["relative_weight_error"] = layer_errors(predicted, sd, total=True)
    metrics["layer_errors"] = layer_errors(predicted, sd)
    metrics["arch"] = target["arch"]
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

    from .package import reconstruct

    out = Path(args.out)
    if out.suffix != ".safetensors":
        return _fail("--out must end in .safetensors")
    if not out.parent.exists():
        return _fail(f"--out: folder {out.parent} does not exist")
    package, sd = _load_pair(args)
    rec = reconstruct(package, sd)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in rec.items()}, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(rec)} tensors)")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import get_target_spec, list_targets

    for name in list_targets():
        print(f"{name:12s} {get_target_spec(name).description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from api.demo import run_demo

    return run_demo(args.stop, steps=args.steps, port=args.port)


# ---- entry point ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nern", description="NeRN: neural representations of CNN weights")
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

    p = sub.add_parser("demo", help="start the embedded service, fit the shipped ResNet20 through it, "
                                    "print the accuracies")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600: a few minutes)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--stop", action="store_true", help="stop the service afterwards instead of leaving it running")
    p.set_defaults(func=cmd_demo)

    for module in ("nern.cli_compression", "api.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
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
