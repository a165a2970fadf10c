"""The NeRN model: the predictor together with everything that turns its rows into weights.

    model = NernModel.create(layers, permutations, layer_scale, hidden=180, depth=5, emb_levels=40, emb_base=1.2)
    weights = model.weights()          # {"layer1.0.conv1.weight": [C_out, C_in, k, k], ...}
    rows = model(idx)                  # predicted kernels of rows `idx`, in weight units (with grad)

Like a coordinate network's wrapper (siren-pytorch's), it owns the coordinate table: the
positional embedding of every kernel's coordinate and the per-row output scale are buffers,
the kernel layout (which row is which kernel of which layer) is a plain attribute. The
predictor itself (`nern.predictor.KernelPredictor`) knows only embeddings → kernels. A package
is built from a model (`nern.package.build_package`) and loads back into one
(`Package.model()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .embedding import embed_coordinates
from .permute import LayerPermutation
from .predictor import KernelPredictor
from .reconstruct import KernelLayout, ModeledLayer


class NernModel(nn.Module):
    embedding: torch.Tensor  # [N, 6K]: every kernel's embedded coordinate, in row order
    row_scale: torch.Tensor  # [N, 1]: the std of each row's layer (the predictor emits std units)
    layer_scale: torch.Tensor  # [L]

    def __init__(self, predictor: KernelPredictor, layout: KernelLayout, layer_scale: torch.Tensor,
                 emb_levels: int, emb_base: float,
                 permutations: Mapping[str, LayerPermutation] | None = None):
        super().__init__()
        self.predictor = predictor
        self.layout = layout
        self.emb_levels, self.emb_base = emb_levels, emb_base
        self.permutations = dict(permutations) if permutations is not None else None
        layer_scale = layer_scale.detach().float()
        self.register_buffer("layer_scale", layer_scale)
        self.register_buffer("row_scale", layer_scale[layout.layer_of_row].unsqueeze(1).clone())
        self.register_buffer("embedding", embed_coordinates(layout.coords, emb_levels, emb_base))

    @classmethod
    def create(cls, layers: Sequence[ModeledLayer], permutations: Mapping[str, LayerPermutation] | None,
               layer_scale: torch.Tensor, *, hidden: int, depth: int, emb_levels: int,
               emb_base: float) -> NernModel:
        """A fresh model (predictor at PyTorch's default init) for these layers."""
        paths = None if permutations is None else [permutations[ly.name].path() for ly in layers]
        layout = KernelLayout(layers, paths)
        predictor = KernelPredictor(6 * emb_levels, hidden, depth, layout.k_max)
        return cls(predictor, layout, layer_scale, emb_levels, emb_base, permutations)

    @staticmethod
    def scales_of(weights: Mapping[str, torch.Tensor], layers: Sequence[ModeledLayer]) -> torch.Tensor:
        """Per-layer output scale: each layer's weight std, so a 16-channel stem and a 64-channel
        block get the same share of the predictor's range."""
        return torch.stack([weights[ly.name].float().std() for ly in layers]).clamp_min(1e-8)

    @property
    def num_kernels(self) -> int:
        return self.layout.num_kernels

    def forward(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted kernels [n, k_max²] of rows `idx` (all rows when None), in weight units."""
        if idx is None:
            return self.predictor(self.embedding) * self.row_scale
        return self.predictor(self.embedding[idx]) * self.row_scale[idx]

    def normalized(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The predictor's raw output (units of each layer's std) for rows `idx`."""
        return self.predictor(self.embedding if idx is None else self.embedding[idx])

    def to_weights(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows in weight units → {param name: weight in the network's own kernel order}."""
        return self.layout.to_weights(rows)

    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """Every modeled weight of the network, regenerated."""
        return self.layout.to_weights(self.forward())


__all__ = ["NernModel"]
