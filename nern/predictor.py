"""The NeRN predictor: an MLP from a kernel's embedded coordinate to its k×k values (NERN.md §2).

Linear(emb, h)+ReLU, (layers-2)×[Linear(h, h)+ReLU], Linear(h, k·k). No residuals, no norm.
Initialisation: PyTorch's default Linear init (as the reference code does).

In float32 on the CPU each Linear(+ReLU) runs as one oneDNN product (`nern.cpu_linear`); the
parameters and their names are nn.Linear's either way, so packages and checkpoints do not care.
"""

from __future__ import annotations

import torch
from torch import nn

from .cpu_linear import linear_relu, onednn_linear_applies


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
        return _run(self.net, embedding)

    @property
    def first(self) -> nn.Linear:
        return self.net[0]

    def after_first(self, pre: torch.Tensor) -> torch.Tensor:
        """The rest of the network from the first Linear's output: forward(e) == after_first(first(e))."""
        return _run(self.net[1:], pre)


def _run(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """blocks(x), with each Linear and the ReLU after it fused where oneDNN applies (not where a
    layer has forward hooks: those see nn.Linear's own call)."""
    if not onednn_linear_applies(x) or x.dim() != 2 or any(m._forward_hooks or m._forward_pre_hooks for m in blocks):
        return blocks(x)
    mods = list(blocks)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Linear):
            relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
            x = linear_relu(x, m.weight, m.bias, relu)
            i += 2 if relu else 1
        else:
            x = m(x)
            i += 1
    return x

