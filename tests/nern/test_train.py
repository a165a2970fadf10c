import pytest
import torch

from nern.config import FitConfig
from nern.errors import CancelledError, ConfigError
from nern.train import NernRun, fit

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="none",
            data="cifar10", lr=1e-2, lr_warmup_steps=0)


def test_distillation_gradients_reach_the_predictor(resnet20_sd):
    run = NernRun(resnet20_sd, FitConfig(steps=5, w_rec=0.0, w_kd=1.0, w_fmd=1.0, **TINY), None)
    before = [p.detach().clone() for p in run.model.predictor.parameters()]
    losses = run.train_step()
    assert set(losses) >= {"kd", "fmd"} and losses["rec"] > 0
    grads = [p.grad for p in run.model.predictor.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(not torch.equal(a, b) for a, b in zip(before, run.model.predictor.parameters()))


@pytest.mark.parametrize("kernel_batch", [0, 500])
def test_each_term_alone_trains(resnet20_sd, kernel_batch):
    cfg = FitConfig(steps=3, w_kd=0.5, w_fmd=0.5, kernel_batch_size=kernel_batch, repredict_every=2, **TINY)
    run = NernRun(resnet20_sd, cfg, None)
    for _ in range(3):
        out = run.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_gives_the_same_predictor_as_an_uninterrupted_run(resnet20_sd, tmp_path, cache_dir, ema_decay):
    cfg = FitConfig(steps=8, checkpoint_every=4, w_kd=1e-2, w_fmd=1e-2, optimizer="ranger", ema_decay=ema_decay,
                    **{**TINY, "permute": "crossfilter"})
    straight = fit(resnet20_sd, cfg, work_dir=tmp_path / "a", source_sha256="s").package
    calls = {"n": 0}

    def stop_after_four() -> bool:
        calls["n"] += 1
        return calls["n"] > 4  # asked before each step: steps 1-4 run, then cancel

    with pytest.raises(CancelledError):
        fit(resnet20_sd, cfg, work_dir=tmp_path / "b", should_stop=stop_after_four, source_sha256="s")
    assert (tmp_path / "b" / "train_state.pt").is_file()
    resumed = fit(resnet20_sd, cfg, work_dir=tmp_path / "b", source_sha256="s")
    assert resumed.summary["resumed_from_step"] == 4 and resumed.summary["steps"] == 8
    for k, v in straight.tensors.items():
        if k.startswith("predictor."):
            assert torch.allclose(v, resumed.package.tensors[k], atol=1e-6), k


def test_resume_refuses_a_state_from_another_configuration(resnet20_sd, tmp_path):
    cfg = FitConfig(steps=2, checkpoint_every=1, w_kd=0, w_fmd=0, **TINY)
    fit(resnet20_sd, cfg, work_dir=tmp_path, source_sha256="s")
    with pytest.raises(ConfigError, match="different configuration"):
        fit(resnet20_sd, cfg.model_copy(update={"steps": 3}), work_dir=tmp_path, source_sha256="s")


def test_progress_reports_step_losses_lr_elapsed_and_eta(resnet20_sd):
    seen = []
    fit(resnet20_sd, FitConfig(steps=3, w_kd=0, w_fmd=0, **TINY), on_progress=seen.append)
    train = [p for p in seen if p.stage == "training"]
    assert [p.step for p in train] == [1, 2, 3]
    assert all(p.total_steps == 3 and p.lr > 0 and p.elapsed_s > 0 and "rec" in p.losses for p in train)
    assert train[0].eta_s > 0 and train[-1].eta_s == 0
    assert seen[-1].stage == "evaluating"


def test_same_seed_same_result_and_noise_mode(resnet20_sd):
    cfg = FitConfig(steps=3, w_kd=1.0, w_fmd=0.1, **{**TINY, "data": "noise"})
    a = fit(resnet20_sd, cfg).package.tensors
    b = fit(resnet20_sd, cfg).package.tensors
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_reports_top1_and_agreement(resnet20_sd):
    cfg = FitConfig(steps=1, w_kd=0, w_fmd=0, eval_data="cifar10-test", eval_limit=200, **TINY)
    s = fit(resnet20_sd, cfg).summary
    assert s["eval_images"] == 200
    assert s["original_top1"] > 80.0  # the shipped ResNet20 scores 91.73% on the full test set
    assert 0 <= s["reconstructed_top1"] <= 100 and 0 <= s["agreement"] <= 100
    assert set(s["layer_errors"]) == {k for k in resnet20_sd if k.endswith("conv1.weight") or k.endswith("conv2.weight")}
