"""Feature-map distillation and the forward hooks that record the maps.

For each chosen map and sample, both networks' maps are L2-normalised as a whole
(map / (‖map‖ + 1e-3)); the loss is the squared L2 distance, summed over maps, averaged over
the batch (NERN.md §3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NORM_EPS = 1e-3


def feature_map_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(student_maps) != len(teacher_maps):
        raise ValueError("student and teacher recorded different numbers of feature maps")
    total = student_maps[0].new_zeros(())
    for s, t in zip(student_maps, teacher_maps):
        s = s.flatten(1)
        t = t.flatten(1)
        s = s / (s.norm(dim=1, keepdim=True) + NORM_EPS)
        t = t / (t.norm(dim=1, keepdim=True) + NORM_EPS)
        total = total + (s - t).square().sum(dim=1).mean()
    return total


class FeatureMapRecorder:
    """Forward hooks on named modules; `maps` holds their outputs from the latest forward.

        with FeatureMapRecorder(model, ["bn1", "layer1.0.bn1"]) as rec:
            model(x)
        rec.maps  # list of tensors, in the order of the names
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no module named {missing[0]!r} to record a feature map from")
        self._modules = [modules[n] for n in names]
        self._slots: list[torch.Tensor | None] = [None] * len(names)
        self._handles: list = []

    def __enter__(self) -> FeatureMapRecorder:
        for i, m in enumerate(self._modules):
            self._handles.append(m.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int):
        def record(_module, _inputs, output):
            self._slots[i] = output

        return record

    @property
    def maps(self) -> list[torch.Tensor]:
        if any(s is None for s in self._slots):
            raise RuntimeError("a recorded module did not run in the forward pass")
        return list(self._slots)  # type: ignore[arg-type]
