"""Images and convolution activations in channels-last (NHWC) memory on the CPU.

oneDNN, which runs PyTorch's float32 convolutions on the CPU, works on NHWC activations as they
are; given NCHW ones, each convolution reorders its input into a blocked layout and its output
back. Measured on a 2-core AMD Zen 1 EPYC (AVX2 only, fp32, 2 threads, 2026-12-01, run log
docs/results/session_2026-12-01d.md):
- inference at the evaluation batch sizes: ResNet-20 and ResNet-56 on 64 CIFAR images 8-13 %
  faster, ResNet-18 on 8 images at 224² 11-14 % faster; scoring the 10,000 CIFAR-10 test images
  with the original and a reconstruction (a job's evaluation) 33-36 s → 29-30 s;
- ResNet-20 forward and backward on 64 images (the distillation's student): 0.34-0.35 → 0.31-0.33 s;
- training steps (`benchmarks/step_ab.py`, interleaved): the bench ×0.95 (0.812 → 0.774 s), the
  defaults with the teacher cache ×0.97-0.98, once the feature-map loss flattens each map in its
  own memory order (`nern.losses.feature_maps`); with a copy of every map to NCHW, ×1.03.
On a 2-core Intel Xeon with AVX512-BF16 and AMX (2026-12-07, docs/results/session_2026-12-07.md)
the gain is larger: bench step ×0.90 (bf16), defaults with the cache ×0.92, ×0.96 in fp32 with
AVX2 kernels forced; scoring 10,000 test images ×0.83. On a 2-core AMD Zen 4 (AVX512-BF16, no
AMX; docs/results/session_2026-12-07b.md): bench ×0.91-0.92, cache ×0.94, AVX2 forced ×0.96-0.97,
scoring ×0.88. On a 2-core AMD Zen 3 (AVX2 only, fp32; docs/results/session_2026-12-07c.md): bench
×0.94-0.97, cache ×0.97-0.99, scoring ×0.76 (ResNet-20) and ×0.88 (ResNet-56). On a 2-core AMD
Zen 5 (AVX512-BF16; docs/results/session_2026-12-08.md): bench ×0.90, cache ×0.95-0.97, AVX2
forced ×0.95-0.96 and ×0.98-0.995, scoring ×0.85 and ×0.80. So NHWC holds on every CPU measured.
Same arithmetic in another summation order. A network's modules keep their parameters as they
are: a convolution given an NHWC input returns NHWC, so the format follows the input through
the network. CUDA keeps PyTorch's default layout (not measured there); step_ab's
"channels_last": false compares the two.

    x = as_activation(normalize(images_u8))        # NHWC on the CPU, unchanged on CUDA
"""

from __future__ import annotations

import torch

# Set to False to keep NCHW everywhere (benchmarks/step_ab.py compares both: "channels_last": false).
enabled = True


def activation_format(device: torch.device | str) -> torch.memory_format:
    """The memory format of image batches and activations on `device`."""
    return torch.channels_last if enabled and torch.device(device).type == "cpu" else torch.contiguous_format


def as_activation(x: torch.Tensor) -> torch.Tensor:
    """A batch of images [B, C, H, W] in its device's activation format (no copy if it is)."""
    return x.contiguous(memory_format=activation_format(x.device)) if x.dim() == 4 else x


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-d tensor laid out NHWC (and not also NCHW, as a 1×1 map or one channel is)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


__all__ = ["activation_format", "as_activation", "enabled", "is_channels_last"]
