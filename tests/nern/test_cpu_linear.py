"""The oneDNN Linear(+ReLU) path of the predictor against float64 and against nn.Linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nern.cpu_linear import linear_relu, onednn_linear_applies
from nern.predictor import KernelPredictor

pytestmark = pytest.mark.skipif(not onednn_linear_applies(torch.zeros(1)), reason="no oneDNN linear in this build")


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_relu_matches_float64_values_and_gradients(relu, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 37, generator=g)
    w = torch.randn(23, 37, generator=g) / 6
    b = torch.randn(23, generator=g) if bias else None
    upstream = torch.randn(300, 23, generator=g)

    def grads(dtype, fn):
        xs, ws = (t.to(dtype, copy=True).requires_grad_() for t in (x, w))
        bs = b.to(dtype, copy=True).requires_grad_() if bias else None
        y = fn(xs, ws, bs)
        (y * upstream.to(dtype)).sum().backward()
        return [y, xs.grad, ws.grad] + ([bs.grad] if bias else [])

    def reference(xs, ws, bs):
        y = torch.nn.functional.linear(xs, ws, bs)
        return y.relu() if relu else y

    got = grads(torch.float32, lambda xs, ws, bs: linear_relu(xs, ws, bs, relu))
    want = grads(torch.float64, reference)
    for a, e in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-5)
    if relu:  # the mask is the ReLU's: no gradient flows where the output was clipped
        assert (got[0] == 0).any() and (got[0] >= 0).all()


def test_predictor_fused_path_equals_plain_sequential():
    torch.manual_seed(0)
    pred = KernelPredictor(24, 32, 5, 3)
    emb = torch.randn(500, 24)
    fused = pred(emb)
    plain = pred.net(emb)  # nn.Sequential's own forward: MKL products, separate ReLUs
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(fused.square().sum(), list(pred.parameters()))
    plain_grads = torch.autograd.grad(plain.square().sum(), list(pred.parameters()))
    for a, e in zip(grads, plain_grads):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    pre = pred.first(emb)
    torch.testing.assert_close(pred.after_first(pre), plain, rtol=1e-5, atol=1e-6)


def test_applies_only_to_float32_cpu_outside_autocast():
    x = torch.zeros(2, 2)
    assert onednn_linear_applies(x)
    assert not onednn_linear_applies(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_linear_applies(x)
        pred = KernelPredictor(4, 8, 3, 1)
        assert pred(torch.randn(3, 4)).dtype == torch.bfloat16  # autocast's own bf16 products


def test_parameter_names_are_nn_linear_ones():
    pred = KernelPredictor(4, 8, 3, 1)
    assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in pred.net)
    assert [n for n, _ in pred.named_parameters()][:2] == ["net.0.weight", "net.0.bias"]


def test_forward_hooks_on_a_layer_still_fire():
    pred = KernelPredictor(4, 8, 3, 1)
    seen = []
    handle = pred.net[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    pred(torch.randn(5, 4))
    handle.remove()
    assert seen == [torch.Size([5, 8])]
