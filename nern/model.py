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

import math
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
        # Per-column weight of the embedding (coarse to fine while training; ones otherwise, so a
        # packaged predictor sees the plain embedding). Not saved: a function of the step.
        self.register_buffer("emb_window", torch.ones(self.embedding.shape[1]), persistent=False)
        self.first_layer = SeparableFirstLayer(layout, self.embedding)

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
        return self.normalized(idx) * (self.row_scale if idx is None else self.row_scale[idx])

    def normalized(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The predictor's raw output (units of each layer's std) for rows `idx` (all: the first
        layer computed per coordinate, see `SeparableFirstLayer`)."""
        if idx is None:
            return self.predictor.after_first(self.first_layer(self.predictor.first, self.emb_window))
        return self.predictor(self.embedding[idx] * self.emb_window)

    @torch.no_grad()
    def open_embedding_levels(self, levels: float) -> None:
        """Coarse to fine: weight level k's sin/cos columns (in all three blocks) by
        (1 − cos(π·clamp(levels − k, 0, 1)))/2 — 0 for k ≥ levels, 1 for k ≤ levels − 1 (as in
        BARF). levels ≥ emb_levels opens them all (the plain embedding)."""
        k = torch.arange(self.emb_levels, device=self.emb_window.device, dtype=self.emb_window.dtype)
        w = 0.5 * (1.0 - torch.cos(math.pi * (levels - k).clamp(0.0, 1.0)))
        self.emb_window.copy_(w.repeat_interleave(2).repeat(3))

    def to_weights(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows in weight units → {param name: weight in the network's own kernel order}."""
        return self.layout.to_weights(rows)

    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """Every modeled weight of the network, regenerated."""
        return self.layout.to_weights(self.forward())


class SeparableFirstLayer(nn.Module):
    """The predictor's first Linear over every row, computed per coordinate instead of per row.

    A row's embedding is three concatenated blocks, γ(layer) | γ(filter) | γ(channel), and within
    a layer the rows run over the (filter, channel) grid in order (row = f·C_in + c), so

        W·e + b = (W_l·γ(l) + b) + W_f·γ(f) + W_c·γ(c)

    is three small products over the distinct values (one per layer, one per filter, one per
    channel: ~150 rows for ResNet-20 instead of ~30,000) and one broadcast sum per layer. The
    backward pass is the same shape: sums of the gradient over the grid's axes, then three small
    products. Exact up to summation order; for all rows ~4× cheaper than the [N, 6K] product
    (and its weight gradient), which is a tenth of a CPU training step. The tables are
    non-persistent buffers: packages do not change.
    """

    def __init__(self, layout: KernelLayout, embedding: torch.Tensor):
        super().__init__()
        block = embedding.shape[1] // 3
        starts = layout.offsets[:-1]
        shapes = [layer.shape[:2] for layer in layout.layers]
        self.shapes = shapes
        self.register_buffer("layer_emb", embedding[starts, :block].clone(), persistent=False)
        self.register_buffer("filter_emb", torch.cat(
            [embedding[o + torch.arange(c_out) * c_in, block:2 * block] for o, (c_out, c_in) in zip(starts, shapes)]
        ), persistent=False)
        self.register_buffer("channel_emb", torch.cat(
            [embedding[o + torch.arange(c_in), 2 * block:] for o, (_, c_in) in zip(starts, shapes)]
        ), persistent=False)

    def forward(self, first: nn.Linear, window: torch.Tensor) -> torch.Tensor:
        """first(embedding · window) for every row: [N, hidden] (window: one weight per embedding
        column, folded into the first layer's weight: W·(e ⊙ w) = (W ⊙ w)·e)."""
        w_l, w_f, w_c = (first.weight * window).chunk(3, dim=1)
        # The three partial products are summed in float32 (under bf16 autocast too): one rounding
        # of the sum, as the plain product's float32 accumulation has, not three.
        per_layer = _wide(torch.nn.functional.linear(self.layer_emb, w_l, first.bias))
        per_filter = _wide(torch.nn.functional.linear(self.filter_emb, w_f)).split([s[0] for s in self.shapes])
        per_channel = _wide(torch.nn.functional.linear(self.channel_emb, w_c)).split([s[1] for s in self.shapes])
        parts = [((f + per_layer[i])[:, None, :] + c[None, :, :]).flatten(0, 1)
                 for i, (f, c) in enumerate(zip(per_filter, per_channel))]
        return torch.cat(parts)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (float64 stays)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


__all__ = ["NernModel", "SeparableFirstLayer"]
