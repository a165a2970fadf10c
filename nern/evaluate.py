"""Evaluation: top-1 of the original and the reconstruction, their agreement, weight errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import normalize
from .reconstruct import run_with_weights

if TYPE_CHECKING:
    from .package import Package


def eval_batch_size(device: torch.device | str) -> int:
    """Images per forward pass when scoring: large on a GPU, moderate on a CPU (where larger
    batches stop paying off and only cost memory)."""
    return 4096 if torch.device(device).type == "cuda" else 1000


@torch.inference_mode()
def evaluate_weights(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor] | None,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> dict:
    """Top-1 (percent) of `model` as is and with `weights` swapped in, and their agreement.

    With weights=None only the original is scored.
    """
    model.eval()
    n = images_u8.shape[0]
    batch_size = batch_size or eval_batch_size(device)
    correct_o = correct_r = agree = 0
    for s in range(0, n, batch_size):
        x = normalize(images_u8[s : s + batch_size].to(device))
        y = labels[s : s + batch_size].to(device)
        po = model(x).argmax(1)
        correct_o += int((po == y).sum())
        if weights is not None:
            pr = run_with_weights(model, weights, x).argmax(1)
            correct_r += int((pr == y).sum())
            agree += int((pr == po).sum())
    out = {"original_top1": round(100.0 * correct_o / n, 2), "eval_images": n}
    if weights is not None:
        out["reconstructed_top1"] = round(100.0 * correct_r / n, 2)
        out["agreement"] = round(100.0 * agree / n, 2)
    return out


def layer_errors(
    predicted: Mapping[str, torch.Tensor], original: Mapping[str, torch.Tensor], total: bool = False
) -> dict[str, float] | float:
    """Relative error ‖W − Ŵ‖ / ‖W‖ per layer, or over all modeled weights with total=True."""
    if total:
        num = sum(float((predicted[k].float().cpu() - original[k].float()).square().sum()) for k in predicted)
        den = sum(float(original[k].float().square().sum()) for k in predicted)
        return round((num / max(den, 1e-30)) ** 0.5, 5)
    return {
        k: round(float((predicted[k].float().cpu() - original[k].float()).norm() / original[k].float().norm().clamp_min(1e-30)), 5)
        for k in predicted
    }


@torch.inference_mode()
def top1(model: nn.Module, weights: Mapping[str, torch.Tensor] | None, images_u8: torch.Tensor,
         labels: torch.Tensor, batch_size: int | None = None) -> float:
    """Top-1 (percent) of `model` with `weights` swapped in (None = as is). Unlike
    `evaluate_weights` it runs one network only, which halves a sweep's time."""
    model.eval()
    dev = next(model.parameters()).device
    batch_size = batch_size or eval_batch_size(dev)
    correct = 0
    for s in range(0, images_u8.shape[0], batch_size):
        x = normalize(images_u8[s : s + batch_size].to(dev))
        out = model(x) if weights is None else run_with_weights(model, weights, x)
        correct += int((out.argmax(1) == labels[s : s + batch_size].to(dev)).sum())
    return round(100.0 * correct / images_u8.shape[0], 2)


def evaluate_package(package: Package, state_dict: Mapping[str, torch.Tensor],
                     data: tuple[torch.Tensor, torch.Tensor] | None = None, *,
                     device: torch.device | str = "cpu") -> dict:
    """How well `package` reproduces the network whose weights are `state_dict`: the relative
    weight error (total and per layer) and, with labelled `data` (uint8 images, labels), the
    top-1 of the original and of the reconstruction and their agreement (`evaluate_weights`).

    The one evaluation of a package: fit, deliver, the CLI commands and the demo call it."""
    network = package.original_network(state_dict).to(device)
    predicted = {k: v.to(device) for k, v in package.model().to(device).weights().items()}
    originals = {n: state_dict[n] for n in predicted}
    out = {"relative_weight_error": layer_errors(predicted, originals, total=True),
           "layer_errors": layer_errors(predicted, originals)}
    if data is not None:
        out.update(evaluate_weights(network, predicted, *data, device=device))
    return out
