"""The learning rate of a schedule's length (`FitConfig.lr` None): 1e-2 below 3,000 steps, 6e-3
from there, 4e-3 from 20,000; an explicit lr wins; the step runs at the chosen value; a state saved
under a former default resumes where the value is the same and is refused where it is not."""

from __future__ import annotations

import pytest
import torch

import nern.config
from nern.config import (
    LR_LONG,
    LR_LONG_FROM_STEPS,
    LR_LONGEST,
    LR_LONGEST_FROM_STEPS,
    LR_SHORT,
    FitConfig,
    library_lr,
    resumes_as,
)
from nern.errors import ConfigError
from nern.train import NernRun, fit

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="none", lr_warmup_steps=0,
            w_kd=0.5, w_fmd=0.25, ema_decay=0.0)


@pytest.mark.parametrize("steps,expected", [(600, 1e-2), (2999, 1e-2), (3000, 6e-3), (10_000, 6e-3),
                                            (19_999, 6e-3), (20_000, 4e-3), (100_000, 4e-3)])
def test_left_unset_the_peak_follows_the_schedule_length(steps, expected):
    assert (LR_SHORT, LR_LONG, LR_LONG_FROM_STEPS, LR_LONGEST, LR_LONGEST_FROM_STEPS) == (1e-2, 6e-3, 3000, 4e-3, 20_000)
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
    assert resumes_as(former, None, run.config)
    assert not resumes_as({**former, "lr": 6e-3}, None, run.config)
    monkeypatch.setattr(nern.config, "LR_LONG_FROM_STEPS", 8)  # unset now means 6e-3 for 8 steps
    assert not resumes_as(former, None, run.config)
    assert resumes_as({**former, "lr": 6e-3}, None, run.config)


def test_a_state_from_before_the_4e_3_tier_is_judged_by_the_rule_it_ran_under():
    unset = FitConfig(steps=20_000)
    assert unset.peak_lr() == 4e-3 and library_lr(20_000, longest=False) == 6e-3
    saved = unset.model_dump(mode="json")  # lr None, saved with no recorded choices: it ran at 6e-3
    assert not resumes_as(saved, None, unset)  # refused, not continued at 4e-3
    assert resumes_as(saved, None, FitConfig(steps=20_000, lr=6e-3))
    assert resumes_as(saved, unset.choices(), unset)  # saved today: recorded 4e-3
    short = FitConfig(steps=3000).model_dump(mode="json")  # below the tier both rules say 6e-3
    assert resumes_as(short, None, FitConfig(steps=3000))


def test_a_saved_state_records_its_rate_and_a_changed_rule_refuses_it(resnet20_sd, monkeypatch, tmp_path):
    monkeypatch.setattr(nern.config, "LR_LONGEST_FROM_STEPS", 8)  # unset: 4e-3 for 8 steps
    cfg = FitConfig(steps=8, **TINY)
    run = NernRun(resnet20_sd, cfg, None)
    run.train_step()
    run.save_state(tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True)["choices"] == {"lr": 4e-3, "distill_late_scale": 1.0,
                                                                             "distill_late_from": 0.75}
    again = NernRun(resnet20_sd, cfg, None)
    again.load_state(tmp_path / "state.pt")
    assert again.step == 1
    monkeypatch.setattr(nern.config, "LR_LONGEST_FROM_STEPS", 20_000)  # a later rule: 1e-2 for 8 steps
    with pytest.raises(ConfigError, match="different configuration"):
        NernRun(resnet20_sd, cfg, None).load_state(tmp_path / "state.pt")


def test_the_summary_records_the_rate_and_the_package_rebuilds_it(resnet20_sd, monkeypatch):
    monkeypatch.setattr(nern.config, "LR_LONG_FROM_STEPS", 2)
    result = fit(resnet20_sd, FitConfig(steps=2, **{**TINY, "w_kd": 0.0, "w_fmd": 0.0, "data": "noise"}))
    assert result.summary["lr"] == 6e-3
    stored = FitConfig(**result.package.meta["config"])
    assert stored.lr is None and stored.peak_lr() == 6e-3
