"""The original network's outputs on every distillation image, computed once per fit.

    cache = teacher_cache_for(net, fmd_names, inputs, budget_mb=2048)   # None where it cannot apply
    logits, maps = cache.lookup(which)                                  # which: the batch's image rows

Every distilling step runs the original network on the step's images for its logits (KD) and
feature maps (FMD). Without augmentation the images are a fixed set seen again and again, so
those outputs never change: `TeacherCache` computes them once for every image (no gradients, in
batches) and keeps them on the run's device, and a step gathers its batch's rows instead of
running the original network. That removes the teacher forward from every step (5.2 of the
38.4 GFLOP of a ResNet-20 bench step) and leaves the method unchanged: the same images give the
same targets, up to the summation order of a different batch size.

It applies when the distillation data are images (not noise), augmentation is off and the cache
fits in `FitConfig.teacher_cache_mb` (ResNet-20 at 32×32: ~1.1 MB per image — its logits and 28
feature maps — so the shipped 1,000-image sample needs ~1.1 GB). Otherwise the original network
runs every step as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from .conv_layout import is_channels_last
from .data import InputSource
from .losses import FeatureMapRecorder

log = logging.getLogger(__name__)

BUILD_BATCH = 256  # images per forward pass while building


class TeacherCache:
    """Logits [N, classes] and each recorded feature map [N, ...] of the original network on
    N images, in the images' row order."""

    def __init__(self, logits: torch.Tensor, maps: Sequence[torch.Tensor], nhwc: Sequence[bool] = ()):
        """`nhwc[i]`: map i is stored [N, H, W, C] (made channels-last), and looked up as NCHW
        views with channels-last strides, the format the student's maps come in."""
        self.logits = logits
        self.maps = list(maps)
        self.nhwc = list(nhwc) or [False] * len(self.maps)

    @classmethod
    @torch.no_grad()
    def build(cls, net: nn.Module, fmd_names: Sequence[str], inputs: InputSource,
              batch: int = BUILD_BATCH) -> TeacherCache:
        """Run `net` (eval mode) once over every image of `inputs`, un-augmented. Each batch's
        outputs are written into tensors sized for all N images (made at the first batch), so
        building needs the cache's memory once, not a list of batches and then their copy."""
        n = len(inputs)
        out: list[torch.Tensor] = []  # logits, then the maps in fmd_names' order
        nhwc: list[bool] = []
        with FeatureMapRecorder(net, fmd_names) as rec:
            for start in range(0, n, batch):
                which = torch.arange(start, min(start + batch, n), device=inputs.device)
                got = [net(inputs.batch(which)), *(rec.maps if fmd_names else [])]
                nhwc = nhwc or [is_channels_last(t) for t in got]
                got = [t.permute(0, 2, 3, 1) if cl else t for t, cl in zip(got, nhwc)]
                out = out or [t.new_empty((n, *t.shape[1:])) for t in got]
                for dst, t in zip(out, got):
                    dst[start:start + len(which)] = t
        return cls(out[0], out[1:], nhwc[1:])

    def lookup(self, which: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The cached logits and feature maps of images `which` (a device index tensor)."""
        maps = [m.index_select(0, which) for m in self.maps]
        return self.logits.index_select(0, which), [m.permute(0, 3, 1, 2) if cl else m
                                                     for m, cl in zip(maps, self.nhwc)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.logits, *self.maps))


@torch.no_grad()
def bytes_per_image(net: nn.Module, fmd_names: Sequence[str], inputs: InputSource) -> int:
    """Cache bytes one image takes: its logits and feature maps (one forward pass of one image)."""
    first = torch.zeros(1, dtype=torch.long, device=inputs.device)
    with FeatureMapRecorder(net, fmd_names) as rec:
        logits = net(inputs.batch(first))
        maps = rec.maps if fmd_names else []
    return sum(t.numel() * t.element_size() for t in (logits, *maps))


def teacher_cache_for(net: nn.Module, fmd_names: Sequence[str], inputs: InputSource | None,
                      budget_mb: int) -> TeacherCache | None:
    """The cache for this fit's distillation, or None where it does not apply: no distillation,
    noise inputs, augmentation on, a zero budget, or more than `budget_mb` MiB needed."""
    if inputs is None or inputs.noise or inputs.augment or budget_mb <= 0 or len(inputs) == 0:
        return None
    need = bytes_per_image(net, fmd_names, inputs) * len(inputs)
    if need > budget_mb * 2**20:
        log.info("teacher cache not used: %d images need %.0f MiB, more than teacher_cache_mb=%d",
                 len(inputs), need / 2**20, budget_mb)
        return None
    cache = TeacherCache.build(net, fmd_names, inputs)
    log.info("teacher cache: %d images, %.0f MiB", len(inputs), cache.nbytes / 2**20)
    return cache


__all__ = ["TeacherCache", "bytes_per_image", "teacher_cache_for"]
