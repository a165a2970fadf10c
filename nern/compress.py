"""Meta-compression of a predictor package (NERN.md §5), and the baselines it must beat.

    small, report = compress_package(package, prune=0.5, quantize="int8")
    save_package(small, "resnet20.small.nern")

Steps, in order: global magnitude pruning of the predictor's weight matrices (biases are
kept), optional fine-tuning of the pruned predictor (`nern.train.NernRun` driven by the one
training loop, with a callback that re-applies the mask after every optimiser step, so pruned
weights stay zero), quantisation (fp16, or int8 with one
scale per output row), and storage: a pruned matrix is written as its non-zero values plus a
bitmask whenever that is smaller (`nern.package.encode_predictor_state`), so the file shrinks.

`compression_sweep` scores a grid of (prune fraction × dtype) next to the honest baselines on
the original network's modeled conv weights: fp16, int8 per-channel post-training quantisation
and global magnitude pruning (fp16 or int8 values + bitmask) at each NeRN row's byte budget.
Every byte count of a NeRN row is the whole package file (predictor, scales, bitmasks,
permutation, layer scales, header and metadata); the unmodeled tensors (BatchNorm, classifier)
are copied from the original in every row, NeRN and baseline alike, and reported separately.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from .callbacks import EachStep
from .config import DEFAULT_SWEEP_DTYPES, DEFAULT_SWEEP_FRACTIONS, QUANTIZE_CHOICES, FitConfig
from .errors import ConfigError, PackageError
from .evaluate import top1
from .package import (
    ENCODED_FORMAT_VERSION,
    PREDICTOR_DTYPES,
    Package,
    dequantize_int8,
    encode_predictor_state,
    predict_weights,
    quantize_int8,
)
from .train import NernRun
from .trainer import Callback, Trainer

log = logging.getLogger(__name__)


# ---- pruning --------------------------------------------------------------------------------

def prunable(name: str, tensor: torch.Tensor) -> bool:
    """The predictor's weight matrices (Linear weights); biases are never pruned."""
    return name.endswith("weight") and tensor.dim() == 2


def lowest_masks(values: Mapping[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Keep-masks (bool) dropping the `fraction` of all entries with the smallest values, ranked
    globally across the given tensors (exactly round(fraction · total) entries; ties go to the
    lower position, so the result is deterministic)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"prune fraction must lie in [0, 1), got {fraction}")
    names = list(values)
    flat = torch.cat([values[n].detach().reshape(-1).double() for n in names])
    k = int(round(fraction * flat.numel()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.sort(flat, stable=True).indices[:k]] = False
    return {n: part.reshape(values[n].shape) for n, part in
            zip(names, torch.split(keep, [values[n].numel() for n in names]))}


def global_magnitude_masks(tensors: Mapping[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Keep-masks zeroing the `fraction` of all entries with the smallest |value| (global)."""
    return lowest_masks({n: t.detach().abs() for n, t in tensors.items()}, fraction)


def prune_predictor(state: Mapping[str, torch.Tensor], fraction: float
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Global magnitude pruning of the predictor's weight matrices → (pruned state, keep-masks)."""
    matrices = {n: t for n, t in state.items() if prunable(n, t)}
    masks = global_magnitude_masks(matrices, fraction)
    pruned = {n: (t.detach().float() * masks[n] if n in masks else t.detach().float()).clone()
              for n, t in state.items()}
    return pruned, masks


# ---- fine-tuning after pruning ----------------------------------------------------------------

def _check_layers(run: NernRun, package: Package) -> None:
    mine = [(ly.name, ly.shape) for ly in run.model.layout.layers]
    if mine != [(ly.name, ly.shape) for ly in package.layers()]:
        raise PackageError("the checkpoint's conv layers do not match the package's modeled layers")


def finetune_run(
    package: Package,
    original_state_dict: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    steps: int,
    *,
    lr: float | None = None,
    threads: int | None = None,
) -> NernRun:
    """A `NernRun` set up to continue training the predictor `state` with the package's own fit
    configuration (losses, data, optimiser) and its stored kernel layout, for `steps` steps.

    lr defaults to a tenth of the fit's learning rate, without warm-up, cosine-decayed over
    `steps`; the optimiser starts fresh.
    """
    stored = package.meta.get("config")
    if not stored:
        raise PackageError("the package has no stored fit configuration; it cannot be fine-tuned")
    if steps < 1:
        raise ConfigError("fine-tuning needs at least 1 step")
    base = FitConfig(**stored)
    lr = lr if lr is not None else base.peak_lr() * 0.1
    cfg = FitConfig(**{
        **base.model_dump(), "steps": steps, "lr": lr, "min_lr": min(base.min_lr, lr), "lr_warmup_steps": 0,
        "eval_data": None, "checkpoint_every": 0, "threads": threads or base.threads,
        "ema_decay": 0.0,  # the pruning mask holds on the trained parameters, which are what we return
    })
    # The package's stored permutation: the predictor's kernel→coordinate map, never recomputed.
    run = NernRun(dict(original_state_dict), cfg, package.meta.get("source_sha256"),
                  permutations=package.permutations())
    _check_layers(run, package)
    run.model.predictor.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    # a fresh optimiser for the loaded weights (Lookahead snapshots its slow weights at creation)
    run.reset_optimizer()
    return run


class KeepPruned(Callback):
    """Zero the pruned weights (keep-masks) at the start and after every optimiser step."""

    def __init__(self, module: torch.nn.Module, masks: Mapping[str, torch.Tensor]):
        params = dict(module.named_parameters())
        self._pairs = [(params[n], m.to(params[n].device, params[n].dtype)) for n, m in masks.items()]

    def apply(self) -> None:
        with torch.no_grad():
            for p, m in self._pairs:
                p.mul_(m)

    def on_train_start(self, trainer: Trainer) -> None:
        self.apply()

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        self.apply()


def fine_tune(
    package: Package,
    original_state_dict: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    steps: int,
    *,
    lr: float | None = None,
    threads: int | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Train the pruned predictor `state` for `steps` steps (see `finetune_run`), zeroing the
    masked-out weights after every optimiser step so they stay pruned. Returns the float32 state."""
    run = finetune_run(package, original_state_dict, state, steps, lr=lr, threads=threads)
    callbacks: list[Callback] = [KeepPruned(run.model.predictor, masks)]
    if on_step is not None:
        callbacks.append(EachStep(on_step))
    Trainer(run, steps, callbacks, log_every=run.log_every).run()
    return {k: v.detach().cpu().float().clone() for k, v in run.model.predictor.state_dict().items()}


# ---- the compressed package ------------------------------------------------------------------

def _dtype_of(quantize: str) -> str:
    if quantize not in QUANTIZE_CHOICES and quantize not in PREDICTOR_DTYPES:
        raise ConfigError(f"unknown quantisation {quantize!r} (use {', '.join(QUANTIZE_CHOICES)})")
    return "fp32" if quantize == "none" else quantize


def package_with_predictor(package: Package, state: Mapping[str, torch.Tensor], dtype: str = "fp32",
                           sparse: bool | None = None, compression: dict | None = None) -> Package:
    """A copy of `package` whose predictor is `state`, stored with the given encoding."""
    pred_tensors, encoding = encode_predictor_state(dict(state), dtype, sparse)
    tensors = {k: v for k, v in package.tensors.items() if not k.startswith("predictor.")}
    tensors.update(pred_tensors)
    meta = {**package.meta, "format_version": ENCODED_FORMAT_VERSION,
            "predictor": {**package.meta["predictor"], "encoding": encoding}}
    if compression is not None:
        meta["compression"] = compression
    return Package(meta=meta, tensors=tensors)


def compress_package(
    package: Package,
    *,
    prune: float = 0.0,
    quantize: str = "none",
    finetune_steps: int = 0,
    original_state_dict: Mapping[str, torch.Tensor] | None = None,
    finetune_lr: float | None = None,
    sparse: bool | None = None,
    threads: int | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[Package, dict]:
    """Prune (global magnitude, fraction `prune`), optionally fine-tune, quantise and re-encode
    the package's predictor. Returns the new package and a report (sizes, sparsity)."""
    dtype = _dtype_of(quantize)
    if finetune_steps and original_state_dict is None:
        raise ConfigError("fine-tuning needs the original checkpoint (its weights are the targets)")
    state = {k: v.float() for k, v in package.predictor().state_dict().items()}
    pruned, masks = prune_predictor(state, prune)
    if finetune_steps:
        pruned = fine_tune(package, original_state_dict, pruned, masks, finetune_steps,
                           lr=finetune_lr, threads=threads, on_step=on_step)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    compression = {"prune": prune, "quantize": dtype, "finetune_steps": finetune_steps,
                   "matrix_weights": total, "matrix_weights_kept": kept}
    small = package_with_predictor(package, pruned, dtype, sparse, compression)
    report = {**compression, **small.size_report(),
              "source_package_bytes": package.size_report()["package_bytes"]}
    return small, report


# ---- baselines on the original's conv weights ------------------------------------------------

def _mask_bytes(weights: Mapping[str, torch.Tensor]) -> int:
    return sum((w.numel() + 7) // 8 for w in weights.values())


def _scale_bytes(weights: Mapping[str, torch.Tensor]) -> int:
    return 4 * sum(w.shape[0] for w in weights.values())


def fp16_weights(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: w.half().float() for n, w in weights.items()}


def int8_weights(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-output-filter symmetric int8 post-training quantisation, dequantised to float32."""
    return {n: dequantize_int8(*quantize_int8(w)) for n, w in weights.items()}


def magnitude_pruned_weights(weights: Mapping[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """The `keep` largest-|w| weights across all layers kept, the rest zeroed."""
    total = sum(w.numel() for w in weights.values())
    masks = global_magnitude_masks(weights, 1.0 - keep / total if keep < total else 0.0)
    return {n: w.float() * masks[n] for n, w in weights.items()}


def baseline_rows(weights: Mapping[str, torch.Tensor], budgets: Sequence[int]) -> list[dict]:
    """Baseline settings (no scores yet): dense fp32/fp16/int8 conv weights, and for each byte
    budget the global magnitude-pruned weights with fp16 or int8 values + bitmask that fit it."""
    n = sum(w.numel() for w in weights.values())
    rows = [
        {"method": "original", "setting": "fp32", "bytes": 4 * n, "weights": dict(weights)},
        {"method": "original", "setting": "fp16", "bytes": 2 * n, "weights": fp16_weights(weights)},
        {"method": "original", "setting": "int8 per-channel PTQ", "bytes": n + _scale_bytes(weights),
         "weights": int8_weights(weights)},
    ]
    for budget in sorted(set(budgets)):
        for kind, per_value, extra in (("fp16", 2, 0), ("int8", 1, _scale_bytes(weights))):
            keep = (budget - _mask_bytes(weights) - extra) // per_value
            if keep <= 0 or keep >= n:  # does not fit / the dense row is as small
                continue
            w = magnitude_pruned_weights(weights, keep)
            if kind == "int8":
                w = int8_weights(w)
            rows.append({"method": "magnitude-pruned", "setting": f"{kind}, keep {keep / n:.1%}",
                         "bytes": keep * per_value + _mask_bytes(weights) + extra, "budget": budget,
                         "weights": w})
    return rows


# ---- the sweep ----------------------------------------------------------------------------------

def _nern_rows(package: Package, original_state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module,
               images_u8: torch.Tensor, labels: torch.Tensor, fractions: Sequence[float], dtypes: Sequence[str],
               finetune_steps: int, threads: int | None, emit: Callable[[dict], dict]) -> list[dict]:
    """One sweep row per (prune fraction × dtype) of the package's predictor."""
    rows = []
    base_state = {k: v.float() for k, v in package.predictor().state_dict().items()}
    for fraction in fractions:
        state, masks = prune_predictor(base_state, fraction)
        ft = finetune_steps if fraction > 0 else 0
        if ft:
            log.info("fine-tuning prune=%.2f for %d steps", fraction, ft)
            state = fine_tune(package, original_state_dict, state, masks, ft, threads=threads)
        for dtype in dtypes:
            small = package_with_predictor(package, state, dtype)
            size = small.size_report()
            acc = top1(model, predict_weights(small), images_u8, labels)
            rows.append(emit({
                "method": "nern", "setting": f"prune {fraction:.0%}, {dtype}" + (f", ft {ft}" if ft else ""),
                "prune": fraction, "dtype": dtype, "finetune_steps": ft, "bytes": size["package_bytes"],
                "predictor_bytes": size["predictor_bytes"], "permutation_bytes": size["permutation_bytes"],
                "top1": acc,
            }))
    return rows


def compression_sweep(
    package: Package,
    original_state_dict: Mapping[str, torch.Tensor],
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_SWEEP_FRACTIONS,
    dtypes: Sequence[str] = DEFAULT_SWEEP_DTYPES,
    finetune_steps: int = 0,
    threads: int | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Accuracy versus bytes for every (prune fraction × dtype) of the package's predictor, and
    the baselines on the original's conv weights, all scored on the same images.

    Returns {"rows": [...], "unmodeled_bytes", "modeled_fp32_bytes", "eval_images"}; each row
    has method, setting, bytes, top1 (NeRN rows also prune/dtype/finetune_steps, the best
    baseline top-1 within the same bytes and whether NeRN beats it).
    """
    dtypes = [_dtype_of(d) for d in dtypes]
    model = package.original_network(original_state_dict)
    names = [ly.name for ly in package.layers()]
    originals = {n: original_state_dict[n].float() for n in names}

    def emit(row: dict) -> dict:
        if on_row is not None:
            on_row(row)
        return row

    nern_rows = _nern_rows(package, original_state_dict, model, images_u8, labels, fractions, dtypes,
                           finetune_steps, threads, emit)

    base_rows = []
    for row in baseline_rows(originals, [r["bytes"] for r in nern_rows]):
        weights = row.pop("weights")
        row["top1"] = top1(model, weights, images_u8, labels)
        base_rows.append(emit(row))

    for r in nern_rows:
        fits = [b["top1"] for b in base_rows if b["bytes"] <= r["bytes"]]
        r["best_baseline_top1"] = max(fits) if fits else None
        r["nern_wins"] = None if not fits else r["top1"] > max(fits)
    return {
        "rows": nern_rows + base_rows,
        "unmodeled_bytes": package.meta["unmodeled"]["bytes"],
        "modeled_fp32_bytes": 4 * sum(w.numel() for w in originals.values()),
        "eval_images": int(labels.shape[0]),
    }


def sweep_table(sweep: dict) -> str:
    """The sweep as a Markdown table (bytes exclude the unmodeled tensors, stated above it)."""
    full = sweep["modeled_fp32_bytes"]
    lines = [
        f"Top-1 on {sweep['eval_images']} images. Bytes: NeRN rows = the whole package file "
        "(predictor, scales, bitmasks, permutation, layer scales, header); baselines = the modeled "
        f"conv weights. Not counted in any row: the unmodeled tensors (BN, classifier), "
        f"{sweep['unmodeled_bytes']:,} bytes, copied from the original in every case.",
        "",
        "| method | setting | bytes | % of fp32 conv | top-1 % | best baseline ≤ bytes | NeRN wins |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(sweep["rows"], key=lambda r: (r["method"] != "nern", -r["bytes"])):
        best = r.get("best_baseline_top1")
        wins = r.get("nern_wins")
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['bytes']:,} | {100 * r['bytes'] / full:.1f} | "
            f"{r['top1']:.2f} | {'' if best is None else f'{best:.2f}'} | "
            f"{'' if r['method'] != 'nern' else ('n/a' if wins is None else ('yes' if wins else 'no'))} |"
        )
    return "\n".join(lines)


__all__ = [
    "baseline_rows", "compress_package", "compression_sweep", "fine_tune", "finetune_run", "global_magnitude_masks",
    "int8_weights", "lowest_masks", "package_with_predictor", "prune_predictor", "sweep_table",
]
