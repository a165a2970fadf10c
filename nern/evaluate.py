"""Evaluation: top-1 of the original and the reconstruction, their agreement, weight errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from .conv_layout import as_activation
from .data import normalize
from .reconstruct import run_with_weights

if TYPE_CHECKING:
    from .package import Package


# On the CPU a batch's activations should stay in the caches: scoring the CIFAR-10 test set with
# ResNet-20 took 9.2 s per 5,000 images at batch 1000 (65 MB per activation) against 3.6 s at 64
# (4 MiB) on a 2-core AMD Zen 3, and ResNet-18 at 224² ran best at 8 (3 MiB per image): README,
# "Evaluation batches on the CPU".
CPU_EVAL_ACTIVATION_BYTES = 4 << 20
CPU_EVAL_BATCH_RANGE = (8, 256)


def eval_batch_size(device: torch.device | str, model: nn.Module | None = None,
                    image_shape: tuple[int, ...] | None = None) -> int:
    """Images per forward pass when scoring. On a GPU 4096. On a CPU as many images as keep the
    network's largest activation within CPU_EVAL_ACTIVATION_BYTES (a power of two within
    CPU_EVAL_BATCH_RANGE), measured by running `model` once on one image of `image_shape`
    (C, H, W); 64 without a model."""
    if torch.device(device).type == "cuda":
        return 4096
    if model is None or image_shape is None:
        return 64
    largest = _largest_activation_bytes(model, image_shape)
    lo, hi = CPU_EVAL_BATCH_RANGE
    fits = max(1, CPU_EVAL_ACTIVATION_BYTES // max(largest, 1))
    return int(min(hi, max(lo, 1 << (fits.bit_length() - 1))))


def _largest_activation_bytes(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Bytes of the largest output any leaf module of `model` makes for one image (run in eval
    mode, so batch norms keep their statistics)."""
    sizes: list[int] = []
    was_training = model.training
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size())
                                     if isinstance(out, torch.Tensor) else None)
             for m in model.modules() if next(m.children(), None) is None]
    try:
        param = next(model.parameters())
        model.eval()
        with torch.inference_mode():
            model(torch.zeros((1, *image_shape), dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return max(sizes, default=0)


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
    batch_size = batch_size or eval_batch_size(device, model, tuple(images_u8.shape[1:]))
    correct_o = correct_r = agree = 0
    for s in range(0, n, batch_size):
        x = as_activation(normalize(images_u8[s : s + batch_size].to(device)))
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
    batch_size = batch_size or eval_batch_size(dev, model, tuple(images_u8.shape[1:]))
    correct = 0
    for s in range(0, images_u8.shape[0], batch_size):
        x = as_activation(normalize(images_u8[s : s + batch_size].to(dev)))
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
