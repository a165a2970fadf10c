"""Linear (+ReLU) layers of the predictor through oneDNN on the CPU in float32.

PyTorch runs a float32 `nn.Linear` on the CPU through MKL's sgemm; on AMD CPUs MKL takes its
AVX2 code path even where AVX-512 is there, and for the predictor's shapes ([~30k, 180] ×
[180, 180]) oneDNN's matmul kernels are faster on every CPU we measured: forward and input
gradient ~15 % on AVX2, ~2× with AVX-512 (Zen 5); the training step ×0.91–0.97 with AVX2
kernels (1 or 2 threads), ×0.84–0.85 with AVX-512 (docs/results/onednn_linear_step_2026-11-29.jsonl).
The weight gradient stays on MKL (faster there for its long reduction). Same arithmetic in float32, different summation order: results agree
to float32 rounding (tests/nern/test_cpu_linear.py).

    if onednn_linear_applies(x):
        y = linear_relu(x, layer.weight, layer.bias, relu=True)   # == relu(layer(x))

Used only for float32 on the CPU outside autocast: bf16 (autocast) and CUDA keep PyTorch's own
kernels, and a build without the oneDNN op falls back to them.
"""

from __future__ import annotations

import torch

# Set to False to run PyTorch's own float32 Linear (benchmarks/step_ab.py compares both: "onednn_linear": false).
enabled = True

_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def onednn_linear_applies(x: torch.Tensor) -> bool:
    """True where `linear_relu` is the faster path: float32 CPU tensors, autocast off."""
    return (enabled and _ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


class _LinearReLU(torch.autograd.Function):
    """y = [relu](x·Wᵀ + b); backward: the ReLU mask from y, dx through oneDNN, dW on MKL."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
        y = _ONEDNN_LINEAR(x.contiguous(), weight.contiguous(), bias, "relu" if relu else "none", [], "")
        ctx.relu = relu
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, y = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad = grad.contiguous()
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        dx = _ONEDNN_LINEAR(grad, weight.t().contiguous(), None, "none", [], "") if need_x else None
        dw = grad.t() @ x if need_w else None
        db = grad.sum(0) if need_b and ctx.has_bias else None
        return dx, dw, db, None


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """relu(F.linear(x, weight, bias)) (or without the ReLU) through oneDNN, with gradients.

    Call only where `onednn_linear_applies(x)`; x is [N, in] (2-D)."""
    return _LinearReLU.apply(x, weight, bias, relu)


__all__ = ["linear_relu", "onednn_linear_applies"]
