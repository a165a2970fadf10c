"""The learning rate of a schedule's length (`FitConfig.lr` None): 1e-2 below 3,000 steps, 6e-3
from there on; an explicit lr wins; the step runs at the chosen value; a state saved under the
former default (1e-2 for every length) resumes where the value is the same."""

from __future__ import annotations

import pytest
import torch

import nern.config
from nern.config import LR_LONG, LR_LONG_FROM_STEPS, LR_SHORT, FitConfig
from nern.train import NernRun, fit

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="none", lr_warmup_steps=0,
            w_kd=0.5, w_fmd=0.25, ema_decay=0.0)


@pytest.mark.parametrize("steps,expected", [(600, 1e-2), (2999, 1e-2), (3000, 6e-3), (10_000, 6e-3)])
def test_left_unset_the_peak_follows_the_schedule_length(steps, expected):
    assert (LR_SHORT, LR_LONG, LR_LONG_FROM_STEPS) == (1e-2, 6e-3, 3000)
    assert FitConfig(steps=steps).lr is None
    assert FitConfig(steps=steps).peak_lr() == expected
    assert FitConfig().peak_lr() == 1e-2  # the demo's 600 steps


def test_an_explicit_lr_wins_and_min_lr_is_checked_against_the_value_taken():
    assert FitConfig(steps=10_000, lr=1e-2).peak_lr() == 1e-2
    assert FitConfig(steps=600, lr=3e-3).peak_lr() == 3e-3
    FitConfig(steps=600, min_lr=8e-3)  # below the 1e-2 of a short schedule: fine
    with pytest.raises(ValueError, match="min_lr must not exceed lr"):
        FitConfig(steps=3000, min_lr=8e-3)  # above the 6e-3 of a long one
    with pytest.raises(ValueError, match="lr"):
        FitConfig(lr=0.0)


def _params_after(sd, cfg: FitConfig, steps: int) -> tuple[dict[str, torch.Tensor], list[float]]:
    run = NernRun(sd, cfg, None)
    lrs = [float(run.train_step()["lr"]) for _ in range(steps)]
    return {k: v.clone() for k, v in run.model.predictor.state_dict().items()}, lrs


@pytest.mark.parametrize("threshold,expected", [(40, 6e-3), (41, 1e-2)])
def test_the_step_runs_at_the_chosen_rate(resnet20_sd, monkeypatch, threshold, expected):
    monkeypatch.setattr(nern.config, "LR_LONG_FROM_STEPS", threshold)  # 40 steps: long from 40 on
    unset, lrs = _params_after(resnet20_sd, FitConfig(steps=40, **TINY), 3)
    assert lrs[0] == pytest.approx(expected, rel=1e-9)  # no warm-up: the peak at the first step
    explicit, _ = _params_after(resnet20_sd, FitConfig(steps=40, lr=expected, **TINY), 3)
    other, _ = _params_after(resnet20_sd, FitConfig(steps=40, lr=1.6e-2 - expected, **TINY), 3)
    assert all(torch.equal(unset[k], explicit[k]) for k in unset)
    assert any(not torch.allclose(unset[k], other[k]) for k in unset)


def test_a_state_saved_with_the_former_default_resumes_where_the_rate_is_the_same(resnet20_sd, monkeypatch):
    run = NernRun(resnet20_sd, FitConfig(steps=8, **TINY), None)  # unset: 1e-2 for 8 steps
    former = FitConfig(steps=8, lr=1e-2, **TINY).model_dump(mode="json")
    assert run._same_config(former)
    assert not run._same_config({**former, "lr": 6e-3})
    monkeypatch.setattr(nern.config, "LR_LONG_FROM_STEPS", 8)  # unset now means 6e-3 for 8 steps
    assert not run._same_config(former)
    assert run._same_config({**former, "lr": 6e-3})


def test_the_summary_records_the_rate_and_the_package_rebuilds_it(resnet20_sd, monkeypatch):
    monkeypatch.setattr(nern.config, "LR_LONG_FROM_STEPS", 2)
    result = fit(resnet20_sd, FitConfig(steps=2, **{**TINY, "w_kd": 0.0, "w_fmd": 0.0, "data": "noise"}))
    assert result.summary["lr"] == 6e-3
    stored = FitConfig(**result.package.meta["config"])
    assert stored.lr is None and stored.peak_lr() == 6e-3
