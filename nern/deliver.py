"""What a finished fit hands its user: the served package (compressed if asked), the reconstructed
weights, importance maps and a summary that describes exactly the served package.

    result = fit(state_dict, config)
    out = deliver(result, state_dict, config, CompressConfig(prune=0.5, quantize="int8"))
    save_package(out.package, "predictor.nern")           # the compressed package
    save_package(out.uncompressed, "predictor-fp32.nern")  # only when compression was applied
    out.importance.save("imp/")                            # importance.safetensors + importance.json
    out.summary["reconstructed_top1"]                      # of out.package, on config's eval data

Without compression the served package is fit's own, and fit's evaluation already describes it.
With compression the served package is re-evaluated on the same evaluation images (fit's
`eval_data` / `eval_limit`) and its weight errors recomputed; fit's numbers for the uncompressed
predictor move to `summary["compression"]["uncompressed"]`. The importance maps are always of
the served package: the relative error of the weights the user reconstructs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .callbacks import Progress
from .compress import compress_package
from .config import CompressConfig, FitConfig
from .data import load_labelled
from .errors import CancelledError
from .evaluate import evaluate_package
from .importance import ImportanceMaps, importance_maps
from .package import Package, reconstruct
from .train import FitResult, resolve_device

# fit's summary keys that describe the predictor (not the original network or the run); its
# package's size is the compression report's `source_package_bytes`
_PREDICTOR_KEYS = ("reconstructed_top1", "agreement", "relative_weight_error", "layer_errors")


@dataclass
class Deliverables:
    package: Package  # the package to serve (compressed when compression was asked for)
    uncompressed: Package | None  # fit's own package, only when `package` is a compressed copy
    reconstructed: dict[str, torch.Tensor]  # the original state_dict with `package`'s kernels
    importance: ImportanceMaps  # of `package`
    summary: dict  # fit's summary, updated for `package`; keys "compression" and "importance"


def deliver(
    result: FitResult,
    state_dict: Mapping[str, torch.Tensor],
    config: FitConfig,
    compress: CompressConfig | None = None,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Deliverables:
    """Compress fit's package if `compress` is given (None = serve it as is), then derive the
    reconstructed weights, importance maps and summary from the package that will be served.

    on_progress gets Progress("compressing", step, finetune_steps, losses) after every fine-tuning
    step; should_stop is checked before compressing and after every fine-tuning step
    (CancelledError when it says so)."""
    summary = dict(result.summary)
    package, uncompressed = result.package, None

    def progress(step: int, total: int, losses: Mapping[str, float] | None = None) -> None:
        if should_stop is not None and should_stop():
            raise CancelledError(f"cancelled while compressing (fine-tuning step {step})")
        if on_progress is not None and step > 0:
            losses = dict(losses or {})
            lr = float(losses.pop("lr", 0.0))
            on_progress(Progress("compressing", step, total, losses, lr))

    summary["compression"] = None
    if compress is not None:
        progress(0, compress.finetune_steps)
        package, report = compress_package(
            result.package, prune=compress.prune, quantize=compress.quantize,
            finetune_steps=compress.finetune_steps, original_state_dict=dict(state_dict), threads=config.threads,
            on_step=lambda step, losses: progress(step, compress.finetune_steps, losses),
        )
        uncompressed = result.package
        report["uncompressed"] = {k: summary[k] for k in _PREDICTOR_KEYS if k in summary}
        summary.update(_describe_package(package, state_dict, config))
        summary["compression"] = report

    maps = importance_maps(package, state_dict)
    summary["importance"] = {  # of the served package; the full maps are `maps`
        "mean_relative_error": {name: round(s["mean"], 6) for name, s in maps.summary().items()},
    }
    return Deliverables(package, uncompressed, reconstruct(package, dict(state_dict)), maps, summary)


def _describe_package(package: Package, state_dict: Mapping[str, torch.Tensor], config: FitConfig) -> dict:
    """Weight errors, size and (with eval data) accuracy of `package`, as fit reports them."""
    data = None
    if config.eval_data:
        data = load_labelled(config.eval_data, config.image_size or package.image_size, config.eval_limit)
    out = evaluate_package(package, state_dict, data, device=resolve_device(config.device))
    out["package_bytes"] = package.size_report()["package_bytes"]
    return out


__all__ = ["Deliverables", "deliver"]
