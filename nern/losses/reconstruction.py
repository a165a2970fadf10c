"""Weight reconstruction loss: one root-mean-squared error over all modeled weights."""

from __future__ import annotations

import torch


def reconstruction_loss(
    predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """sqrt(mean((predicted - target)²)) over the elements where `mask` is True (all if None)."""
    diff2 = (predicted - target).square()
    if mask is None:
        return diff2.mean().sqrt()
    return (diff2 * mask).sum().div(mask.sum().clamp_min(1)).sqrt()
