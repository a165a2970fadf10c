"""The teacher cache: the original network's outputs on every distillation image, computed once.

Checked against independent computations: the cached outputs against the original (unfolded)
network run on the same images, and training with the cache against training that runs the
original network every step.
"""

from __future__ import annotations

import logging

import pytest
import torch

import nern.train
from nern.config import FitConfig
from nern.losses import FeatureMapRecorder
from nern.train import NernRun, fit

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=8, threads=1, permute="none", lr=1e-2,
            lr_warmup_steps=2, w_kd=0.5, w_fmd=0.5, ema_decay=0.9, augment=False)


def test_cached_outputs_are_the_original_networks_on_each_image(resnet20_sd, images_npz):
    run = NernRun(resnet20_sd, FitConfig(data=images_npz, **TINY), None)
    cache = run.teacher_cache
    assert cache is not None and cache.logits.shape == (20, 10) and len(cache.maps) == len(run.fmd_names) == 28
    assert cache.nbytes == sum(m[0].numel() * 4 for m in cache.maps) * 20 + 20 * 10 * 4
    which = torch.tensor([19, 3, 3, 0])
    logits, maps = cache.lookup(which)
    # Independent: the original network as loaded (batch norms not folded), on those images.
    net = run.target.module.eval()
    with FeatureMapRecorder(net, run.fmd_names) as rec, torch.no_grad():
        expected = net(run.inputs.batch(which))
        expected_maps = rec.maps
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    for got, want in zip(maps, expected_maps):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_training_with_the_cache_equals_running_the_original_network_every_step(resnet20_sd, images_npz):
    cached = NernRun(resnet20_sd, FitConfig(data=images_npz, steps=6, **TINY), None)
    plain = NernRun(resnet20_sd, FitConfig(data=images_npz, steps=6, teacher_cache_mb=0, **TINY), None)
    assert cached.teacher_cache is not None and plain.teacher_cache is None
    for _ in range(6):  # 6 × 8 images: more than two epochs of the 20 images
        a, b = dict(cached.train_step()), dict(plain.train_step())
        assert set(a) == {"rec", "kd", "fmd", "loss", "lr"}
        assert all(a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7) for k in a)
    for name, p in plain.model.predictor.state_dict().items():
        torch.testing.assert_close(cached.model.predictor.state_dict()[name], p, rtol=1e-5, atol=1e-6)


def test_the_graph_path_gathers_from_the_cache_and_resumes_exactly(resnet20_sd, images_npz, tmp_path, monkeypatch):
    monkeypatch.setattr(nern.train, "use_cuda_graphs", lambda *args: True)
    cfg = FitConfig(data=images_npz, steps=6, **TINY)
    straight = NernRun(resnet20_sd, cfg, None)
    assert straight.teacher_cache is not None and straight._graphed is not None
    [straight.train_step() for _ in range(6)]
    first = NernRun(resnet20_sd, cfg, None)
    [first.train_step() for _ in range(3)]
    first.save_state(tmp_path / "state.pt")
    resumed = NernRun(resnet20_sd, cfg, None)
    resumed.load_state(tmp_path / "state.pt")
    [resumed.train_step() for _ in range(3)]
    for name, p in straight.model.predictor.state_dict().items():
        assert torch.equal(resumed.model.predictor.state_dict()[name], p), name


def test_the_cache_is_used_only_where_it_applies(resnet20_sd, images_npz, caplog):
    def cache_of(**over):
        return NernRun(resnet20_sd, FitConfig(**{**TINY, "data": images_npz, **over}), None).teacher_cache

    assert cache_of(augment=True) is None  # the original network sees new crops every step
    assert cache_of(data="noise") is None
    assert cache_of(teacher_cache_mb=0) is None
    assert cache_of(w_kd=0.0, w_fmd=0.0) is None  # nothing is distilled
    with caplog.at_level(logging.INFO, logger="nern.teacher_cache"):
        assert cache_of(teacher_cache_mb=1) is None  # 20 images need ~21 MiB
    assert "20 images need 21 MiB, more than teacher_cache_mb=1" in caplog.text
    assert cache_of(w_fmd=0.0).maps == []  # KD only: the logits alone


def test_a_fit_reports_whether_it_used_the_cache(resnet20_sd, images_npz):
    on = fit(resnet20_sd, FitConfig(data=images_npz, steps=2, **TINY)).summary
    off = fit(resnet20_sd, FitConfig(data=images_npz, steps=2, **{**TINY, "augment": True})).summary
    assert (on["teacher_cache"], off["teacher_cache"]) == (True, False)


def test_building_in_several_batches_fills_every_row_in_order(resnet20_sd, images_npz):
    from nern.teacher_cache import TeacherCache

    run = NernRun(resnet20_sd, FitConfig(data=images_npz, **TINY), None)
    net = run.train_net.module
    whole = TeacherCache.build(net, run.fmd_names, run.inputs)  # one batch of 20
    batched = TeacherCache.build(net, run.fmd_names, run.inputs, batch=7)  # 7 + 7 + 6
    assert batched.nbytes == whole.nbytes
    for got, want in zip([batched.logits, *batched.maps], [whole.logits, *whole.maps]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
