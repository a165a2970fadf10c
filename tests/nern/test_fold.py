"""Batch-norm folding of the training copy: same maps, same outputs, same gradients."""

import torch
from torch import nn

from nern.fold import FoldedNetwork, conv_bn_pairs
from nern.losses import FeatureMapRecorder, feature_map_loss
from nern.models.cifar_resnet import CifarResNet
from nern.reconstruct import run_with_weights
from nern.targets import feature_map_modules


def _trained_looking(net: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics and affine parameters, as a trained network has."""
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    net = net.eval().double()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_every_conv_bn_pair_of_both_resnet_shortcuts_is_found():
    a, b = CifarResNet(20, option="A"), CifarResNet(8, option="B")
    assert len(conv_bn_pairs(a)) == 19  # the stem and 2 per block; option A shortcuts have no conv
    pairs_b = conv_bn_pairs(b)
    assert ("layer2.0.shortcut.0", "layer2.0.shortcut.1") in pairs_b and len(pairs_b) == 1 + 2 * 3 + 2


def test_folded_network_gives_the_same_logits_and_feature_maps():
    net = _trained_looking(CifarResNet(8, option="B"))
    folded = FoldedNetwork.of(net)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.module.modules())
    names = feature_map_modules("resnet8b", net)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with FeatureMapRecorder(net, names) as r0, FeatureMapRecorder(folded.module, names) as r1:
        y0, y1 = net(x), folded.module(x)
        for a, b in zip(r0.maps, r1.maps):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)


def test_predicted_weights_through_the_fold_give_the_same_loss_and_gradients():
    """The reconstructed network: its (differentiable) weights scaled into the folded copy give
    the loss and the gradient w.r.t. those weights of the unfolded network."""
    net = _trained_looking(CifarResNet(8, option="A"))
    folded = FoldedNetwork.of(net)
    names = feature_map_modules("resnet8", net)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    pred = {k: (v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)).requires_grad_()
            for k, v in net.state_dict().items() if k.endswith("weight") and v.dim() == 4}

    def loss_through(module, weights):
        with FeatureMapRecorder(module, names) as rec:
            with torch.no_grad():
                module(x)
                teacher = [m.detach() for m in rec.maps]
            logits = run_with_weights(module, weights, x)
            return feature_map_loss(rec.maps, teacher) + logits.square().mean()

    plain = loss_through(net, pred)
    grads_plain = torch.autograd.grad(plain, list(pred.values()))
    via_fold = loss_through(folded.module, folded.weights_for(pred))
    grads_fold = torch.autograd.grad(via_fold, list(pred.values()))
    torch.testing.assert_close(via_fold, plain, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_plain, grads_fold):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.bn(self.conv(x))
        return self.bn(self.conv(-x))


def test_a_network_that_does_not_trace_is_left_unfolded():
    net = _Untraceable().eval()
    folded = FoldedNetwork.of(net)
    assert folded.scales == {} and isinstance(folded.module.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(folded.module(x), net(x))
