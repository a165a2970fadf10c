"""The target's coordinate table, and writing predicted kernels into the network.

`KernelLayout` is built once per fit: it lists the modeled Conv2d layers, the normalised
coordinate of every kernel (in permuted order), and the index map that takes the predictor's
rows back to each layer's weight tensor in the original order. Writing all kernels is then a
handful of tensor ops (one gather per kernel size and a split), never a loop over kernels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .errors import TargetError


@dataclass(frozen=True)
class ModeledLayer:
    name: str  # parameter key, e.g. "layer1.0.conv1.weight"
    shape: tuple[int, int, int, int]  # (C_out, C_in, k, k)

    @property
    def num_kernels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def kernel_size(self) -> int:
        return self.shape[2]


def find_modeled_layers(model: nn.Module) -> list[ModeledLayer]:
    """Every Conv2d of the network, in module order. Grouped convolutions are refused."""
    layers = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if m.groups != 1:
            raise TargetError(
                f"layer {name!r} is a grouped/depthwise convolution (groups={m.groups}); "
                "NeRN models groups=1 convolutions only"
            )
        kh, kw = m.kernel_size
        if kh != kw:
            raise TargetError(f"layer {name!r} has a non-square {kh}x{kw} kernel; only k×k is modeled")
        layers.append(ModeledLayer(f"{name}.weight" if name else "weight", tuple(m.weight.shape)))
    if not layers:
        raise TargetError("the network has no Conv2d layer to model")
    return layers


def centre_crop_index(k_max: int, k: int) -> torch.Tensor:
    """Flat indices into a k_max×k_max kernel of its centre k×k crop (row-major)."""
    off = (k_max - k) // 2
    rows = torch.arange(off, off + k)
    return (rows[:, None] * k_max + rows[None, :]).reshape(-1)


class KernelLayout:
    """Coordinates of every modeled kernel and the map from predictor rows to weights."""

    def __init__(self, layers: Sequence[ModeledLayer], paths: Sequence[np.ndarray | None] | None = None):
        self.layers = list(layers)
        self.k_max = max(layer.kernel_size for layer in self.layers)
        paths = list(paths) if paths is not None else [None] * len(self.layers)
        n_layers = len(self.layers)
        coords, offsets, groups = [], [0], {}
        for li, layer in enumerate(self.layers):
            c_out, c_in = layer.shape[:2]
            pos = torch.arange(layer.num_kernels)
            coords.append(
                torch.stack(
                    (torch.full_like(pos, li).double() / n_layers,
                     (pos // c_in).double() / c_out, (pos % c_in).double() / c_in), dim=1
                )
            )
            offsets.append(offsets[-1] + layer.num_kernels)
            # Row of the prediction for each original kernel q: offset + (position of q in path).
            path = paths[li]
            if path is None:
                rows = pos
            else:
                rows = torch.empty(layer.num_kernels, dtype=torch.long)
                rows[torch.as_tensor(path, dtype=torch.long)] = pos
            groups.setdefault(layer.kernel_size, []).append((li, rows + offsets[li]))
        self.coords = torch.cat(coords)  # [N, 3] in coordinate (row) order
        self.offsets = offsets
        self.num_kernels = offsets[-1]
        self.layer_of_row = torch.cat(
            [torch.full((layer.num_kernels,), i) for i, layer in enumerate(self.layers)]
        )
        # Per kernel size: which layers, the rows to gather (original order), crop indices.
        self.groups = []
        for k, members in sorted(groups.items()):
            self.groups.append(
                (
                    [li for li, _ in members],
                    torch.cat([rows for _, rows in members]),
                    centre_crop_index(self.k_max, k),
                )
            )
        self._device_groups: dict[torch.device, list] = {}

    def _groups_on(self, device: torch.device) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """`groups` with the index tensors on `device`, copied there once: writing the weights
        then makes no host-to-device copy (a CUDA graph cannot capture one)."""
        if device not in self._device_groups:
            self._device_groups[device] = [(ids, rows.to(device), crop.to(device)) for ids, rows, crop in self.groups]
        return self._device_groups[device]

    def to_weights(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictor output [N, k_max²] (row order) → {param name: weight in original order}."""
        out: dict[str, torch.Tensor] = {}
        for layer_ids, gather_rows, crop in self._groups_on(rows.device):
            block = rows.index_select(0, gather_rows)
            if crop.numel() != rows.shape[1]:
                block = block.index_select(1, crop)
            sizes = [self.layers[i].num_kernels for i in layer_ids]
            for li, part in zip(layer_ids, torch.split(block, sizes)):
                out[self.layers[li].name] = part.reshape(self.layers[li].shape)
        return out

    def from_weights(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of `to_weights` for targets: [N, k_max²] rows, smaller kernels zero-padded to
        the centre (the padding is never compared: see `valid_mask`)."""
        first = weights[self.layers[0].name]
        rows = torch.zeros(self.num_kernels, self.k_max**2, dtype=first.dtype, device=first.device)
        for layer_ids, gather_rows, crop in self.groups:
            block = torch.cat([weights[self.layers[i].name].reshape(-1, crop.numel()) for i in layer_ids])
            g = gather_rows.to(rows.device)
            rows[g[:, None], crop.to(rows.device)[None, :]] = block
        return rows

    def valid_mask(self) -> torch.Tensor:
        """[N, k_max²] bool: which predicted values land in a weight (centre crops)."""
        mask = torch.zeros(self.num_kernels, self.k_max**2, dtype=torch.bool)
        for _, gather_rows, crop in self.groups:
            mask[gather_rows[:, None], crop[None, :]] = True
        return mask

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def run_with_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run `model` on x with its modeled conv weights replaced (differentiably) by `weights`."""
    return functional_call(model, dict(weights), (x,), strict=False)
