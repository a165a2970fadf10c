"""Regularisation smoothing (NERN.md §4): train the *original* network so that coordinate-
adjacent kernels are similar, which makes it easier for NeRN to represent later.

The loss is −λ · Σ cos(adjacent kernels), summed over every k×k Conv2d (k > 1 by default; a
1×1 kernel's cosine is only its sign), over neighbours along the input channel
(W[f, c] with W[f, c+1]) and along the filter (W[f, c] with W[f+1, c]). λ defaults to 5e-6,
the paper's best factor. Add it to the task loss:

    smoothing = KernelSmoothingLoss(model)             # λ = 5e-6
    for images, labels in loader:
        loss = F.cross_entropy(model(images), labels) + smoothing()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

The module holds no parameters of its own; it reads the network's current conv weights at
every call, so it follows `model.to(device)` and weight loading.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_WEIGHT = 5e-6


def adjacent_cosine_sum(weight: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Σ cos over channel-adjacent and filter-adjacent kernel pairs of a [C_out, C_in, k, k]
    weight (a zero kernel contributes 0)."""
    c_out, c_in = weight.shape[:2]
    k = weight.reshape(c_out, c_in, -1)
    total = weight.new_zeros(())
    if c_in > 1:
        total = total + nn.functional.cosine_similarity(k[:, 1:], k[:, :-1], dim=-1, eps=eps).sum()
    if c_out > 1:
        total = total + nn.functional.cosine_similarity(k[1:], k[:-1], dim=-1, eps=eps).sum()
    return total


class KernelSmoothingLoss(nn.Module):
    """−λ · Σ cos(adjacent kernels) over the network's convolutions (see the module docstring)."""

    def __init__(self, model: nn.Module, weight: float = DEFAULT_WEIGHT, min_kernel_size: int = 2):
        super().__init__()
        self.weight = weight
        # a plain list, so the network is not registered as this module's child
        self._convs = [
            m for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and min(m.kernel_size) >= min_kernel_size
        ]
        if not self._convs:
            raise ValueError(f"the network has no groups=1 Conv2d with kernels of at least {min_kernel_size}")

    def similarity(self) -> torch.Tensor:
        """Σ cos(adjacent kernels) over all covered layers (differentiable)."""
        return sum((adjacent_cosine_sum(m.weight) for m in self._convs), self._convs[0].weight.new_zeros(()))

    def forward(self) -> torch.Tensor:
        return -self.weight * self.similarity()


__all__ = ["DEFAULT_WEIGHT", "KernelSmoothingLoss", "adjacent_cosine_sum"]
