"""Regularisation smoothing loss: value by hand, gradient raises adjacent similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nern.smoothing_loss import DEFAULT_WEIGHT, KernelSmoothingLoss


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Conv2d(5, 6, 1))


def _adjacent_cosines(w: np.ndarray) -> list[float]:
    """All channel-adjacent and filter-adjacent kernel cosines, by explicit loops."""
    c_out, c_in = w.shape[:2]
    k = w.reshape(c_out, c_in, -1)

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    out = [cos(k[f, c], k[f, c + 1]) for f in range(c_out) for c in range(c_in - 1)]
    out += [cos(k[f, c], k[f + 1, c]) for f in range(c_out - 1) for c in range(c_in)]
    return out


def test_default_weight_and_layers():
    net = _net()
    loss = KernelSmoothingLoss(net)
    assert loss.weight == DEFAULT_WEIGHT == 5e-6
    assert list(loss.parameters()) == []  # the network is not registered as a child
    assert len(loss._convs) == 2  # the 1×1 conv is skipped by default
    assert len(KernelSmoothingLoss(net, min_kernel_size=1)._convs) == 3


def test_value_matches_hand_computation():
    net = _net().double()
    loss = KernelSmoothingLoss(net, weight=0.5)
    expect = sum(sum(_adjacent_cosines(m.weight.detach().numpy())) for m in (net[0], net[2]))
    assert float(loss().detach()) == pytest.approx(-0.5 * expect, rel=1e-10)
    # channel pairs 4·2 + filter pairs 3·3 = 17 in layer 0; 5·3 + 4·4 = 31 in layer 2
    assert len(_adjacent_cosines(net[0].weight.detach().numpy())) == 17
    assert len(_adjacent_cosines(net[2].weight.detach().numpy())) == 31


def test_gradient_step_increases_adjacent_similarity():
    net = _net().double()
    loss = KernelSmoothingLoss(net, weight=1.0)
    convs = (net[0], net[2])
    before = [np.mean(_adjacent_cosines(m.weight.detach().numpy())) for m in convs]
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    opt.zero_grad()
    loss().backward()
    opt.step()
    after = [np.mean(_adjacent_cosines(m.weight.detach().numpy())) for m in convs]
    assert all(a > b for a, b in zip(after, before)), (before, after)
    assert net[3].weight.grad is None  # untouched layer


def test_gradient_scales_with_weight():
    net = _net().double()
    grads = []
    for lam in (1.0, DEFAULT_WEIGHT):
        net.zero_grad()
        KernelSmoothingLoss(net, weight=lam)().backward()
        grads.append(net[0].weight.grad.clone())
    assert torch.allclose(grads[1], grads[0] * DEFAULT_WEIGHT, rtol=1e-9, atol=0)
    assert float(grads[1].abs().max()) > 0


def test_used_next_to_a_task_loss():
    net = _net()
    smoothing = KernelSmoothingLoss(net)
    x = torch.randn(2, 3, 8, 8)
    task = net(x).square().mean()
    total = task + smoothing()
    total.backward()
    assert net[0].weight.grad is not None and torch.isfinite(total)
