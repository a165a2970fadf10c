"""The CUDA-graph path of the training step, checked on the CPU.

There is no GPU here, so the capture itself cannot run; everything around it can. With
`use_cuda_graphs` forced on (monkeypatched where `nern.train` reads it) a CPU run takes the path
a CUDA run takes — device-made inputs, a tensor learning rate written in place, the average's
weight in a device tensor, the step function called through `GraphedStep` on its static input
buffer, losses left on the device and read every `log_every` steps — only the step function is
called eagerly instead of being captured and replayed.
"""

from __future__ import annotations

import sys

import pytest
import torch

import nern.train
from nern.config import FitConfig
from nern.errors import CancelledError, ConfigError
from nern.graphed import GraphedStep, cuda_graphs_reason, use_cuda_graphs
from nern.optim import load_optimizer_state, make_optimizer, set_learning_rate
from nern.train import NernRun, fit
from nern.trainer import Callback, Trainer

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="none", lr=1e-2,
            lr_warmup_steps=2, w_kd=0.5, w_fmd=0.5, ema_decay=0.9)
# Tolerance of the graph path against the eager step: the one numerical difference is the
# learning rate held as a float32 tensor instead of a Python float (relative difference ~1e-8),
# which moves Adam's step size by at most an ulp; measured parameter differences after 6 steps
# are ~3e-8 on values ~0.25, so atol 1e-6 / rtol 1e-5 is ~30x that and far below any real change
# (one step moves parameters by ~lr = 1e-2).
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture()
def graph_path(monkeypatch):
    """Take the CUDA-graph path on the CPU."""
    monkeypatch.setattr(nern.train, "use_cuda_graphs", lambda *args: True)


def _steps(run: NernRun, n: int) -> list[dict[str, float]]:
    return [dict(run.train_step()) for _ in range(n)]


def test_graph_path_matches_the_eager_step(resnet20_sd, monkeypatch):
    cfg = FitConfig(steps=6, distill_warmup_steps=2, **TINY)  # the step's inputs appear at step 3
    eager = NernRun(resnet20_sd, cfg, None)
    eager_losses = _steps(eager, 6)
    monkeypatch.setattr(nern.train, "use_cuda_graphs", lambda *args: True)
    graph = NernRun(resnet20_sd, cfg, None)
    assert graph._graphed is not None and isinstance(graph.optimizer.param_groups[0]["lr"], torch.Tensor)
    graph_losses = _steps(graph, 6)
    assert [list(a) for a in eager_losses] == [list(b) for b in graph_losses]  # same terms, same order
    for a, b in zip(eager_losses, graph_losses):
        assert all(b[k] == pytest.approx(a[k], rel=RTOL, abs=ATOL) for k in a)
    for name, p in eager.model.predictor.state_dict().items():
        assert torch.allclose(graph.model.predictor.state_dict()[name], p, rtol=RTOL, atol=ATOL), name
        assert torch.allclose(graph.average.shadow[name], eager.average.shadow[name], rtol=RTOL, atol=ATOL)


def test_graph_path_resumes_exactly_and_its_state_loads_into_an_eager_run(resnet20_sd, tmp_path, monkeypatch):
    monkeypatch.setattr(nern.train, "use_cuda_graphs", lambda *args: True)
    cfg = FitConfig(steps=6, **TINY)
    straight = NernRun(resnet20_sd, cfg, None)
    _steps(straight, 6)
    first = NernRun(resnet20_sd, cfg, None)
    _steps(first, 3)
    first.save_state(tmp_path / "state.pt")
    resumed = NernRun(resnet20_sd, cfg, None)
    lr_tensor = resumed.optimizer.param_groups[0]["lr"]
    resumed.load_state(tmp_path / "state.pt")
    assert resumed.optimizer.param_groups[0]["lr"] is lr_tensor  # still the tensor the schedule writes
    _steps(resumed, 3)
    for name, p in straight.model.predictor.state_dict().items():
        assert torch.equal(resumed.model.predictor.state_dict()[name], p), name
        assert torch.equal(resumed.average.shadow[name], straight.average.shadow[name]), name

    monkeypatch.setattr(nern.train, "use_cuda_graphs", use_cuda_graphs)  # the eager path again
    eager = NernRun(resnet20_sd, cfg, None)
    eager.load_state(tmp_path / "state.pt")
    assert isinstance(eager.optimizer.param_groups[0]["lr"], float)
    _steps(eager, 3)
    for name, p in straight.model.predictor.state_dict().items():
        assert torch.allclose(eager.model.predictor.state_dict()[name], p, rtol=RTOL, atol=ATOL), name


class _SyncCounter:
    """Counts host reads of tensors (item/tolist/cpu/numpy) made by the nern package itself."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in ("item", "tolist", "cpu", "numpy"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("nern."):
                self.calls.append(name)
            return original(tensor, *args, **kwargs)

        return counted


class _Seen(Callback):
    def __init__(self):
        self.losses: dict[int, dict] = {}

    def on_step_end(self, trainer, losses):
        self.losses[trainer.step] = losses


def test_losses_stay_on_the_device_between_reads(resnet20_sd, monkeypatch, graph_path):
    run = NernRun(resnet20_sd, FitConfig(steps=7, log_every=3, **TINY), None)
    assert run.log_every == 3
    counter, seen = _SyncCounter(monkeypatch), _Seen()
    Trainer(run, 7, [seen], log_every=run.log_every).run()
    assert counter.calls == ["tolist"] * 3  # one transfer at steps 3, 6 and the last (7), nothing else
    assert [s for s, losses in seen.losses.items() if losses] == [3, 6, 7]
    assert set(seen.losses[6]) == {"rec", "kd", "fmd", "loss", "lr"}


def test_divergence_raises_at_the_read_back(resnet20_sd, graph_path):
    run = NernRun(resnet20_sd, FitConfig(steps=9, log_every=3, **TINY), None)

    class PoisonAfterFirstStep(Callback):
        def on_step_end(self, trainer, losses):
            if trainer.step == 1:
                with torch.no_grad():
                    run.model.predictor.net[0].weight[0, 0] = float("nan")

    with pytest.raises(ConfigError, match="diverged at step 3"):
        Trainer(run, 9, [PoisonAfterFirstStep()], log_every=3).run()
    assert run.step == 3  # steps 2 and 3 ran without waiting for their losses


def test_cuda_graphs_are_refused_where_they_cannot_run(resnet20_sd):
    with pytest.raises(ConfigError, match="cuda_graphs=True is impossible here: CUDA graphs need a CUDA device"):
        NernRun(resnet20_sd, FitConfig(cuda_graphs=True, device="cpu", **TINY), None)
    run = NernRun(resnet20_sd, FitConfig(device="cpu", **TINY), None)
    assert run.cuda_graphs is False and run._graphed is None and run.log_every == 1
    cuda, n = torch.device("cuda"), 1000
    assert use_cuda_graphs(FitConfig(), cuda, n) is True  # the default: on where it can run
    assert use_cuda_graphs(FitConfig(cuda_graphs=False), cuda, n) is False
    assert "kernel_batch_size" in cuda_graphs_reason(FitConfig(kernel_batch_size=100), cuda, n)
    assert cuda_graphs_reason(FitConfig(kernel_batch_size=n), cuda, n) is None  # ≥ all kernels = all kernels
    assert use_cuda_graphs(FitConfig(optimizer="ranger"), cuda, n) is False
    with pytest.raises(ConfigError, match="'ranger' optimiser is not capture-safe"):
        use_cuda_graphs(FitConfig(optimizer="ranger", cuda_graphs=True), cuda, n)


def test_graphed_step_keeps_static_inputs_and_restarts_on_a_new_shape():
    seen = []

    def step(x):
        seen.append(x)
        return torch.zeros(1) if x is None else x.sum().reshape(1)

    graphed = GraphedStep(step, torch.device("cpu"))
    assert graphed(None).item() == 0 and seen[-1] is None
    a = graphed(torch.ones(2, 3))
    buffer = seen[-1]
    b = graphed(torch.full((2, 3), 2.0))
    assert seen[-1] is buffer and (a.item(), b.item()) == (6.0, 12.0)  # one static buffer, refilled
    graphed(torch.ones(4, 3))
    assert seen[-1] is not buffer and seen[-1].shape == (4, 3)
    assert not graphed.captured  # nothing is captured on the CPU


def test_tensor_learning_rate_is_written_in_place_and_states_cross_between_kinds():
    lin = torch.nn.Linear(3, 2)
    graph_safe = make_optimizer(lin.parameters(), "adam", 1e-2, (0.9, 0.999), 0.0, graph_safe=True)
    lr = graph_safe.param_groups[0]["lr"]
    set_learning_rate(graph_safe, 5e-3)
    assert graph_safe.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(5e-3)
    lin(torch.ones(1, 3)).sum().backward()
    graph_safe.step()
    plain = make_optimizer(lin.parameters(), "adam", 1e-2, (0.9, 0.999), 0.0)
    load_optimizer_state(plain, graph_safe.state_dict())
    assert plain.param_groups[0]["lr"] == 1e-2 and plain.state[lin.weight]["step"].item() == 1
    load_optimizer_state(graph_safe, plain.state_dict())
    assert graph_safe.param_groups[0]["lr"] is lr
    with pytest.raises(ValueError, match="only adam"):
        make_optimizer(lin.parameters(), "ranger", 1e-2, (0.9, 0.999), 0.0, graph_safe=True)


def test_a_state_saved_before_the_new_settings_still_resumes(resnet20_sd, tmp_path):
    cfg = FitConfig(steps=2, checkpoint_every=1, **{**TINY, "w_kd": 0, "w_fmd": 0, "ema_decay": 0.0})
    calls = iter([False, True])
    with pytest.raises(CancelledError):  # step 1 runs and is saved, then the run is cancelled
        fit(resnet20_sd, cfg, work_dir=tmp_path, source_sha256="s", should_stop=lambda: next(calls))
    path = tmp_path / "train_state.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("cuda_graphs", "log_every")}
    torch.save(state, path)
    assert fit(resnet20_sd, cfg, work_dir=tmp_path, source_sha256="s").summary["resumed_from_step"] == 1
