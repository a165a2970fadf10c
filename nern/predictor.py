"""The NeRN predictor: an MLP from a kernel's embedded coordinate to its k×k values (NERN.md §2).

Linear(emb, h)+ReLU, (layers-2)×[Linear(h, h)+ReLU], Linear(h, k·k). No residuals, no norm.
Initialisation: PyTorch's default Linear init (as the reference code does).
"""

from __future__ import annotations

import torch
from torch import nn


class KernelPredictor(nn.Module):
    def __init__(self, in_dim: int, hidden: int, layers: int, kernel_size: int):
        super().__init__()
        if layers < 2:
            raise ValueError("the predictor needs at least 2 Linear layers")
        dims = [in_dim] + [hidden] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(hidden, kernel_size * kernel_size))
        self.net = nn.Sequential(*blocks)
        self.kernel_size = kernel_size

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """[N, in_dim] → [N, k·k] (flattened kernels)."""
        return self.net(embedding)

    @property
    def first(self) -> nn.Linear:
        return self.net[0]

    def after_first(self, pre: torch.Tensor) -> torch.Tensor:
        """The rest of the network from the first Linear's output: forward(e) == after_first(first(e))."""
        return self.net[1:](pre)

