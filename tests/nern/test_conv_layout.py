"""Channels-last (NHWC) images and activations on the CPU (`nern.conv_layout`).

The layout changes where numbers sit in memory, never which numbers: every check compares the
NHWC path against the NCHW one (or a count by hand) on the same inputs.
"""

from __future__ import annotations

import pytest
import torch

import nern.conv_layout
from nern.config import FitConfig
from nern.conv_layout import activation_format, as_activation, is_channels_last
from nern.data import InputSource
from nern.losses import feature_map_loss
from nern.precision import native_bf16
from nern.train import NernRun

CL = torch.channels_last
TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=8, threads=1, permute="none", lr=1e-2,
            lr_warmup_steps=2, w_kd=0.5, w_fmd=0.5, ema_decay=0.9)


@pytest.fixture
def nchw_everywhere(monkeypatch):
    monkeypatch.setattr(nern.conv_layout, "enabled", False)


def test_the_cpu_gets_nhwc_and_a_batch_is_converted_once():
    assert activation_format("cpu") == CL
    assert activation_format(torch.device("cuda")) == torch.contiguous_format  # no CUDA needed to ask
    x = torch.randn(4, 3, 8, 8)
    y = as_activation(x)
    assert is_channels_last(y) and torch.equal(y, x) and not is_channels_last(x)
    assert as_activation(y) is y  # already NHWC: no copy
    assert as_activation(torch.randn(4, 10)).dim() == 2  # not an image batch: left alone
    # a one-channel or 1×1 map is both layouts at once: not reported as NHWC
    assert not is_channels_last(as_activation(torch.randn(4, 1, 8, 8)))
    assert not is_channels_last(as_activation(torch.randn(4, 8, 1, 1)))


def test_disabled_keeps_nchw(nchw_everywhere):
    assert activation_format("cpu") == torch.contiguous_format
    x = torch.randn(2, 3, 4, 4)
    assert as_activation(x) is x


def test_feature_map_loss_is_the_same_whatever_the_layouts():
    torch.manual_seed(0)
    teacher = [torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.randn(3, 8, 2, 2, dtype=torch.float64)]
    student = [t + 0.3 * torch.randn_like(t) for t in teacher]
    results = []
    for s_fmt, t_fmt in ((torch.contiguous_format, torch.contiguous_format), (CL, CL), (CL, torch.contiguous_format),
                         (torch.contiguous_format, CL)):
        s = [m.contiguous(memory_format=s_fmt).requires_grad_(True) for m in student]
        t = [m.contiguous(memory_format=t_fmt) for m in teacher]
        loss = feature_map_loss(s, t)
        grads = torch.autograd.grad(loss, s)
        results.append((loss.item(), grads))
    (want, want_g), *others = results
    for got, got_g in others:
        assert got == pytest.approx(want, rel=1e-12)
        for g, w in zip(got_g, want_g):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)


def test_input_batches_hold_the_same_images_in_nhwc(images_npz):
    for augment in (False, True):
        nchw = InputSource(images_npz, 32, augment, torch.Generator().manual_seed(4))
        nhwc = InputSource(images_npz, 32, augment, torch.Generator().manual_seed(4), CL)
        for _ in range(3):
            a, b = nchw.next_batch(8), nhwc.next_batch(8)
            assert a.is_contiguous() and is_channels_last(b) and torch.equal(a, b)
    noise = InputSource("noise", 8, False, torch.Generator().manual_seed(1), CL).next_batch(4)
    assert is_channels_last(noise)
    assert torch.equal(noise, InputSource("noise", 8, False, torch.Generator().manual_seed(1)).next_batch(4))


def test_the_teacher_cache_serves_nhwc_maps_equal_to_nchw_ones(resnet20_sd, images_npz, monkeypatch):
    run = NernRun(resnet20_sd, FitConfig(data=images_npz, augment=False, **TINY), None)
    monkeypatch.setattr(nern.conv_layout, "enabled", False)
    ref = NernRun(resnet20_sd, FitConfig(data=images_npz, augment=False, **TINY), None)
    cache, ref_cache = run.teacher_cache, ref.teacher_cache
    assert any(cache.nhwc) and not any(ref_cache.nhwc)
    which = torch.tensor([19, 3, 3, 0])
    (logits, maps), (ref_logits, ref_maps) = cache.lookup(which), ref_cache.lookup(which)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for got, want, cl in zip(maps, ref_maps, cache.nhwc):
        assert got.shape == want.shape and is_channels_last(got) == cl
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _five_steps_in_both_layouts(sd, data, monkeypatch, *, loss_rel: float, **config) -> float:
    """Five steps of an NHWC run and of an NCHW one from the same seed: checks every step's losses
    and returns how far apart the predictors end, relative to how far training moved them."""
    nhwc = NernRun(sd, FitConfig(data=data, steps=5, **config, **TINY), None)
    monkeypatch.setattr(nern.conv_layout, "enabled", False)
    nchw = NernRun(sd, FitConfig(data=data, steps=5, **config, **TINY), None)
    assert is_channels_last(nhwc.inputs.next_batch(2)) and nchw.inputs.next_batch(2).is_contiguous()

    def flat(run: NernRun) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in run.model.predictor.parameters()])

    start = flat(nchw).clone()
    assert torch.equal(flat(nhwc), start)
    for _ in range(5):
        a, b = dict(nhwc.train_step()), dict(nchw.train_step())
        assert set(a) == {"rec", "kd", "fmd", "loss", "lr"}
        assert all(a[k] == pytest.approx(b[k], rel=loss_rel, abs=1e-6) for k in a)
    return float((flat(nhwc) - flat(nchw)).norm() / (flat(nchw) - start).norm())


# The parameters are compared as a whole, not element by element: Adam moves a parameter whose
# gradient is near zero by up to ±lr on that gradient's sign and size, so a summation order's
# last bits can put single elements several 1e-5 apart (fp32 on an AMX Xeon, 2026-12-07: 11 of 825
# elements above 1e-6, at most 3.4e-5) while the predictors agree to 5e-5 of the distance trained.

@pytest.mark.parametrize("augment", [False, True])
def test_training_in_nhwc_follows_training_in_nchw(resnet20_sd, images_npz, monkeypatch, augment):
    """fp32, stated (a CPU with native bf16 would choose bf16): the layouts differ only in
    summation order. Measured on an AMX Xeon: losses within 2e-7, parameters 5e-5 apart."""
    apart = _five_steps_in_both_layouts(resnet20_sd, images_npz, monkeypatch, loss_rel=1e-4,
                                        augment=augment, amp=False)
    assert apart < 1e-3


@pytest.mark.skipif(not native_bf16("cpu"), reason="bf16 is emulated on this CPU (fp32 is its choice)")
def test_bf16_training_in_nhwc_follows_training_in_nchw(resnet20_sd, images_npz, monkeypatch):
    """bf16 autocast, the choice of CPUs with native bf16: each convolution rounds its output to
    bf16, so the summation orders part further: on an AMX Xeon losses within 4e-5, parameters
    1.2e-4 apart."""
    apart = _five_steps_in_both_layouts(resnet20_sd, images_npz, monkeypatch, loss_rel=1e-3,
                                        augment=False, amp=True)
    assert apart < 2e-3


def test_scoring_in_nhwc_counts_the_same_as_in_nchw(resnet20_sd, monkeypatch):
    from nern.data import load_labelled
    from nern.evaluate import evaluate_weights
    from nern.targets import TargetNetwork

    net = TargetNetwork.load(resnet20_sd, None, None).module
    images, labels = load_labelled("cifar10-test", 32)
    images, labels = images[:300], labels[:300]
    weights = {k: v * 0.9 for k, v in resnet20_sd.items() if k.endswith("conv2.weight")}
    got = evaluate_weights(net, weights, images, labels, batch_size=64)
    monkeypatch.setattr(nern.conv_layout, "enabled", False)
    assert evaluate_weights(net, weights, images, labels, batch_size=64) == got
