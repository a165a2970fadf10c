"""Batch-norm folding for training: a frozen, eval-mode network with each BatchNorm2d that
follows a Conv2d merged into that convolution.

In eval mode a BatchNorm2d is a per-channel affine map, y = s·x + (β − s·μ) with
s = γ / √(σ² + ε), so conv→BN equals one convolution with weights W·s (per output channel) and
a bias. Training runs the network twice per step (the original's forward, the reconstructed
one's forward and backward): folded, neither pass spends a memory pass over every activation on
batch norm, and the backward pass has no batch-norm gradient to compute. The reconstructed
network gets the same fold by scaling its predicted kernels (`FoldedNetwork.weights_for`), so
gradients still reach the predictor exactly.

The folded BatchNorm2d modules are replaced by `nn.Identity` under the same name, so forward
hooks on them (feature-map distillation records batch-norm outputs) see the same maps. Only
the training copy is folded: evaluation and packages use the original network.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

log = logging.getLogger(__name__)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv module name, batch-norm module name) for every BatchNorm2d whose only input is a
    Conv2d's output that nothing else reads. Empty when the network cannot be traced."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # a network fx cannot trace is simply not folded
        log.info("batch-norm folding skipped: the network does not trace (%s)", str(e)[:120])
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


@dataclass
class FoldedNetwork:
    """A folded training copy of a network, and the per-output-channel scale of each folded
    convolution's weight (keyed by the weight's parameter name)."""

    module: nn.Module
    scales: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module) -> FoldedNetwork:
        """Fold `model` (eval mode, frozen; left untouched) into a new module."""
        folded = copy.deepcopy(model).eval()
        modules = dict(folded.named_modules())
        scales: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for conv_name, bn_name in conv_bn_pairs(model):
                conv, bn = modules[conv_name], modules[bn_name]
                if not bn.track_running_stats or bn.running_var is None:
                    continue
                s = torch.rsqrt(bn.running_var + bn.eps)
                if bn.affine:
                    s = s * bn.weight
                shift = (bn.bias if bn.affine else torch.zeros_like(s)) - bn.running_mean * s
                if conv.bias is not None:
                    shift = shift + conv.bias * s
                conv.weight.mul_(s.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter(shift.clone(), requires_grad=False)
                _replace(folded, bn_name, nn.Identity())
                scales[f"{conv_name}.weight"] = s.detach().clone().view(-1, 1, 1, 1)
        return cls(folded, scales)

    def to(self, device: torch.device) -> FoldedNetwork:
        self.module.to(device)
        self.scales = {k: v.to(device) for k, v in self.scales.items()}
        return self

    def weights_for(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights of the original network → the folded network's (differentiably)."""
        return {k: w * self.scales[k] if k in self.scales else w for k, w in weights.items()}


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


__all__ = ["FoldedNetwork", "conv_bn_pairs"]
