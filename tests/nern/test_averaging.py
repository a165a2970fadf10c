import pytest
import torch
from torch import nn
from torch.func import functional_call

from nern.averaging import ParameterAverage
from nern.config import FitConfig
from nern.package import load_package, save_package
from nern.train import NernRun, fit

TINY = dict(hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="none",
            data="cifar10", lr=1e-2, lr_warmup_steps=0, w_kd=0.0, w_fmd=0.0)


def test_average_follows_the_formula_by_hand():
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    avg = ParameterAverage(lin, decay=0.5)
    expected = torch.tensor([[1.0, 2.0]])
    for n, new in enumerate([[3.0, 2.0], [0.0, -4.0], [8.0, 8.0]], start=1):
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([new]))
        avg.update(lin)
        d = min(0.5, (1 + n) / (10 + n))  # warm-up: 2/11, 3/12, then 0.5
        expected = d * expected + (1 - d) * torch.tensor([new])
        assert torch.allclose(avg.shadow["weight"], expected, atol=1e-7)


def test_applied_swaps_in_and_restores_the_parameters_exactly():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    avg = ParameterAverage(net, decay=0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    live = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(5, 3)
    with avg.applied(net):
        averaged_out = net(x)
        assert all(torch.equal(p, avg.shadow[k]) for k, p in net.named_parameters())
    assert all(torch.equal(a, b) for a, b in zip(live, net.parameters()))
    assert not torch.allclose(averaged_out, net(x))


def test_decay_must_be_in_the_open_unit_interval():
    with pytest.raises(ValueError, match="decay"):
        ParameterAverage(nn.Linear(1, 1), decay=1.0)
    with pytest.raises(ValueError):
        FitConfig(ema_decay=1.0)


def test_fit_packages_the_average_and_evaluates_it(resnet20_sd, tmp_path):
    cfg = FitConfig(steps=6, ema_decay=0.5, **TINY)
    run = NernRun(resnet20_sd, cfg, None)
    for _ in range(6):
        run.train_step()
    live = run.model.weights()
    averaged = run.predicted_weights()
    with torch.no_grad():  # the averaged parameters, run through the predictor without swapping them in
        rows = functional_call(run.model.predictor, run.average.shadow, (run.model.embedding,)) * run.model.row_scale
    by_hand = run.model.layout.to_weights(rows)
    name = run.model.layout.names[0]
    assert torch.allclose(averaged[name], by_hand[name], atol=1e-6)
    assert not torch.allclose(averaged[name], live[name])

    result = fit(resnet20_sd, cfg, source_sha256="s")
    path = tmp_path / "p.nern"
    save_package(result.package, path)
    pkg = load_package(path)
    straight = NernRun(resnet20_sd, cfg, None)
    for _ in range(6):
        straight.train_step()
    for k, v in straight.average.shadow.items():
        assert torch.allclose(pkg.tensors[f"predictor.{k}"].float(), v, atol=1e-6), k
