"""The late loss balance (`distill_late_scale`, `distill_late_from`): the distillation terms'
weights rise by the factor from that fraction of the schedule on (where unset, three quarters
below 10,000 steps and the half from there on), in the eager step and in the step the CUDA-graph
path runs (where the factor is a device tensor written before each step)."""

from __future__ import annotations

import pytest
import torch

import nern.config
import nern.train
from nern.config import FitConfig, resumes_as
from nern.train import NernRun

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="none", lr=1e-2,
            lr_warmup_steps=2, w_kd=0.5, w_fmd=0.25, ema_decay=0.9)


def _losses(run: NernRun, n: int) -> list[dict[str, float]]:
    return [dict(run.train_step()) for _ in range(n)]


@pytest.mark.parametrize("graph_path", [False, True])
def test_the_distillation_weights_rise_by_the_factor_from_the_given_fraction(resnet20_sd, monkeypatch, graph_path):
    if graph_path:
        monkeypatch.setattr(nern.train, "use_cuda_graphs", lambda *args: True)
    cfg = FitConfig(steps=8, distill_late_scale=4.0, distill_late_from=0.5, **TINY)
    run = NernRun(resnet20_sd, cfg, None)
    assert (run._graphed is not None) == graph_path
    for step, t in enumerate(_losses(run, 8)):
        factor = 4.0 if step >= 4 else 1.0  # 0.5 of 8 steps: from the fifth step (index 4) on
        by_hand = t["rec"] + factor * (0.5 * t["kd"] + 0.25 * t["fmd"])
        assert t["loss"] == pytest.approx(by_hand, rel=1e-6), step


def test_before_its_step_a_late_balance_run_is_the_plain_run(resnet20_sd):
    plain = NernRun(resnet20_sd, FitConfig(steps=8, **TINY), None)
    late = NernRun(resnet20_sd, FitConfig(steps=8, distill_late_scale=4.0, distill_late_from=0.5, **TINY), None)
    for a, b in zip(_losses(plain, 4), _losses(late, 4)):
        assert b == pytest.approx(a, rel=1e-6)
    for name, p in plain.model.predictor.state_dict().items():
        assert torch.allclose(late.model.predictor.state_dict()[name], p, rtol=1e-6, atol=1e-7), name
    # From then on the larger distillation weight moves the predictor elsewhere.
    plain.train_step(), late.train_step()
    moved = max(float((late.model.predictor.state_dict()[n] - p).abs().max())
                for n, p in plain.model.predictor.state_dict().items())
    assert moved > 1e-5


def test_a_late_balance_outside_the_schedule_is_refused():
    with pytest.raises(ValueError, match="distill_late_from"):
        FitConfig(distill_late_from=1.0)
    with pytest.raises(ValueError, match="distill_late_scale"):
        FitConfig(distill_late_scale=-1.0)


def test_left_unset_the_factor_follows_the_schedule_length():
    from nern.config import LATE_SCALE_FROM_STEPS, LATE_SCALE_LONG

    assert FitConfig().distill_late_scale is None
    assert FitConfig(steps=LATE_SCALE_FROM_STEPS - 1).late_scale() == 1.0  # the demo's 600 steps: off
    assert FitConfig(steps=LATE_SCALE_FROM_STEPS).late_scale() == LATE_SCALE_LONG == 5.0
    assert FitConfig(steps=10_000, distill_late_scale=1.0).late_scale() == 1.0  # an explicit value wins
    assert FitConfig(steps=600, distill_late_scale=3.0).late_scale() == 3.0


def test_left_unset_the_start_follows_the_schedule_length():
    from nern.config import LATE_FROM_LONG_FROM_STEPS

    assert FitConfig().distill_late_from is None
    assert FitConfig(steps=4_400).late_from() == 0.75  # three quarters below 10,000 steps
    assert FitConfig(steps=LATE_FROM_LONG_FROM_STEPS - 1).late_from() == 0.75
    assert FitConfig(steps=LATE_FROM_LONG_FROM_STEPS).late_from() == 0.5 == FitConfig(steps=20_000).late_from()
    assert FitConfig(steps=4_400, distill_late_from=0.5).late_from() == 0.5  # an explicit value wins
    assert FitConfig(steps=20_000, distill_late_from=0.75).late_from() == 0.75
    assert FitConfig(steps=4_400).choices()["distill_late_from"] == 0.75


@pytest.mark.parametrize("threshold,factor", [(8, 5.0), (9, 1.0)])
def test_an_unset_factor_is_applied_by_the_step_from_the_threshold_on(resnet20_sd, monkeypatch, threshold, factor):
    monkeypatch.setattr(nern.config, "LATE_SCALE_FROM_STEPS", threshold)  # 8 steps: long from 8 on
    run = NernRun(resnet20_sd, FitConfig(steps=8, **TINY), None)
    for step, t in enumerate(_losses(run, 8)):
        f = factor if step >= 6 else 1.0  # unset, three quarters of 8 steps: from the seventh step on
        assert t["loss"] == pytest.approx(t["rec"] + f * (0.5 * t["kd"] + 0.25 * t["fmd"]), rel=1e-6), step


def test_a_state_saved_with_the_former_default_resumes_where_the_factor_is_the_same(resnet20_sd, monkeypatch):
    run = NernRun(resnet20_sd, FitConfig(steps=8, **TINY), None)  # unset: 1 for 8 steps
    former = FitConfig(steps=8, distill_late_scale=1.0, **TINY).model_dump(mode="json")
    assert resumes_as(former, None, run.config)
    assert not resumes_as({**former, "distill_late_scale": 5.0}, None, run.config)
    monkeypatch.setattr(nern.config, "LATE_SCALE_FROM_STEPS", 8)  # unset now means 5 for 8 steps
    assert not resumes_as(former, None, run.config)
    assert resumes_as({**former, "distill_late_scale": 5.0}, None, run.config)


def test_left_unset_on_a_short_schedule_the_run_is_exactly_the_one_balance_run(resnet20_sd):
    unset = NernRun(resnet20_sd, FitConfig(steps=8, **TINY), None)  # the demo's case: 1 below the threshold
    one = NernRun(resnet20_sd, FitConfig(steps=8, distill_late_scale=1.0, **TINY), None)
    assert unset.late_scale is not None and one.late_scale is None  # a multiplication by 1.0 more
    assert _losses(unset, 8) == _losses(one, 8)  # bit for bit: x·1.0 is x
    for name, p in one.model.predictor.state_dict().items():
        assert torch.equal(unset.model.predictor.state_dict()[name], p), name


def test_a_state_saved_when_the_late_balance_always_started_at_the_half_resumes_only_where_it_still_does():
    """Before `distill_late_from` was a library choice its default was 0.5, stored in the state's
    configuration and missing from its recorded choices. Left unset today it means 0.75 below
    10,000 steps (another run: refused) and 0.5 from there on (the same run: resumed)."""
    for steps, same in ((4_400, False), (10_000, True)):
        unset = FitConfig(steps=steps, **TINY)
        former = {**unset.model_dump(mode="json"), "distill_late_from": 0.5}
        recorded = {"lr": unset.peak_lr(), "distill_late_scale": unset.late_scale()}
        assert resumes_as(former, recorded, unset) is same, steps
        assert resumes_as(former, None, unset) is same, steps
        assert resumes_as(former, recorded, FitConfig(steps=steps, distill_late_from=0.5, **TINY))
        assert resumes_as(unset.model_dump(mode="json"), unset.choices(), unset)  # saved today
        explicit = FitConfig(steps=steps, distill_late_from=unset.late_from(), **TINY)
        assert resumes_as(unset.model_dump(mode="json"), unset.choices(), explicit)
