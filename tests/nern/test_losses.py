import math

import torch

from nern.losses import FeatureMapRecorder, distillation_loss, feature_map_loss, reconstruction_loss


def test_reconstruction_rmse_by_hand():
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    assert math.isclose(reconstruction_loss(p, t).item(), math.sqrt((4 + 9) / 4), rel_tol=1e-6)
    mask = torch.tensor([[True, True], [False, False]])
    assert math.isclose(reconstruction_loss(p, t, mask).item(), math.sqrt(4 / 2), rel_tol=1e-6)


def test_distillation_kl_by_hand():
    s = torch.tensor([[0.0, math.log(3.0)]])  # softmax = (1/4, 3/4)
    t = torch.tensor([[math.log(3.0), 0.0]])  # softmax = (3/4, 1/4)
    pt, ps = [0.75, 0.25], [0.25 + 1e-4, 0.75 + 1e-4]
    expected = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    assert math.isclose(distillation_loss(s, t).item(), expected, rel_tol=1e-5)
    # batch mean; identical logits give (almost) zero
    assert distillation_loss(t.repeat(3, 1), t.repeat(3, 1)).item() < 1e-3


def test_feature_map_loss_by_hand():
    a = torch.tensor([[[[3.0, 4.0]]]])  # norm 5
    b = torch.tensor([[[[0.0, 2.0]]]])  # norm 2
    na, nb = [3 / 5.001, 4 / 5.001], [0.0, 2 / 2.001]
    expected = sum((x - y) ** 2 for x, y in zip(na, nb))
    got = feature_map_loss([a, a * 2], [b, b * 2])
    nb2 = [0.0, 4 / 4.001]
    na2 = [6 / 10.001, 8 / 10.001]
    expected += sum((x - y) ** 2 for x, y in zip(na2, nb2))
    assert math.isclose(got.item(), expected, rel_tol=1e-5)


def _naive_feature_map_loss(student, teacher):
    total = 0.0
    for s, t in zip(student, teacher):
        s, t = s.flatten(1), t.flatten(1)
        s = s / (s.norm(dim=1, keepdim=True) + 1e-3)
        t = t / (t.norm(dim=1, keepdim=True) + 1e-3)
        total = total + (s - t).square().sum(dim=1).mean()
    return total


def test_feature_map_loss_and_gradient_match_the_naive_formula():
    torch.manual_seed(0)
    teacher = [torch.randn(3, 4, 5, 5, dtype=torch.float64), torch.randn(3, 8, 2, 2, dtype=torch.float64)]
    for noise in (1.0, 1e-4):  # far apart, and nearly equal (no cancellation in the value)
        student = [(t + noise * torch.randn_like(t)).requires_grad_(True) for t in teacher]
        got = feature_map_loss(student, teacher)
        (g_got,) = torch.autograd.grad(got, student[0])
        want = _naive_feature_map_loss(student, teacher)
        (g_want,) = torch.autograd.grad(want, student[0])
        assert math.isclose(got.item(), want.item(), rel_tol=1e-9)
        assert torch.allclose(g_got, g_want, rtol=1e-7, atol=1e-12)
    # an all-zero student map: the value is ‖t̂‖² and the gradient finite
    zero = [torch.zeros(3, 4, 5, 5, dtype=torch.float64, requires_grad=True)]
    got = feature_map_loss(zero, teacher[:1])
    got.backward()
    assert math.isclose(got.item(), _naive_feature_map_loss([zero[0].detach()], teacher[:1]).item(), rel_tol=1e-9)
    assert torch.isfinite(zero[0].grad).all()
    assert torch.autograd.gradcheck(lambda s: feature_map_loss([s], teacher[1:]),
                                    (torch.randn(3, 8, 2, 2, dtype=torch.float64, requires_grad=True),))


def test_recorder_returns_maps_in_name_order():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x = torch.randn(4, 2)
    with FeatureMapRecorder(net, ["2", "0"]) as rec:
        net(x)
    assert torch.equal(rec.maps[1], net[0](x)) and rec.maps[0].shape == (4, 1)
    assert not net[0]._forward_hooks  # hooks removed on exit
