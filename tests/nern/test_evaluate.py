"""The one evaluation of a package, against an independent computation."""

from __future__ import annotations

import torch

from nern.config import FitConfig
from nern.data import load_labelled, normalize
from nern.evaluate import evaluate_package
from nern.package import reconstruct
from nern.targets import create_target
from nern.train import fit

TINY = dict(steps=3, hidden=16, layers=3, emb_levels=4, batch_size=4, threads=1, permute="crossfilter",
            w_kd=0, w_fmd=0, lr_warmup_steps=0)


def _top1_by_hand(state_dict, images, labels) -> float:
    net = create_target("resnet20")
    net.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        pred = torch.cat([net.eval()(normalize(images[i:i + 100])).argmax(1) for i in range(0, len(images), 100)])
    return round(100.0 * float((pred == labels).float().mean()), 2), pred


def test_evaluate_package_matches_a_network_rebuilt_by_hand(resnet20_sd, cache_dir):
    package = fit(resnet20_sd, FitConfig(**TINY), source_sha256="s").package
    images, labels = load_labelled("cifar10-test", 32, 300)
    got = evaluate_package(package, resnet20_sd, (images, labels))

    rebuilt = reconstruct(package, resnet20_sd)
    top_r, pred_r = _top1_by_hand(rebuilt, images, labels)
    top_o, pred_o = _top1_by_hand(resnet20_sd, images, labels)
    assert got["reconstructed_top1"] == top_r and got["original_top1"] == top_o
    assert got["agreement"] == round(100.0 * float((pred_r == pred_o).float().mean()), 2)
    assert got["eval_images"] == 300

    names = [d["name"] for d in package.meta["layers"]]
    num = sum(float((rebuilt[n] - resnet20_sd[n]).square().sum()) for n in names)
    den = sum(float(resnet20_sd[n].square().sum()) for n in names)
    assert abs(got["relative_weight_error"] - (num / den) ** 0.5) < 1e-4
    first = names[0]
    by_hand = float((rebuilt[first] - resnet20_sd[first]).norm() / resnet20_sd[first].norm())
    assert abs(got["layer_errors"][first] - by_hand) < 1e-4


def test_without_data_only_weight_errors(resnet20_sd):
    package = fit(resnet20_sd, FitConfig(**{**TINY, "permute": "none"})).package
    got = evaluate_package(package, resnet20_sd)
    assert set(got) == {"relative_weight_error", "layer_errors"}
    assert len(got["layer_errors"]) == 19


def test_cpu_eval_batch_keeps_the_largest_activation_within_the_budget(resnet20_sd):
    """ResNet-20 on 32² images: largest activation 16×32×32 floats = 64 KiB per image → 64 images
    in 4 MiB. Bigger activations hit the floor (8), tiny ones the ceiling (256); GPUs get 4096."""
    from torch import nn

    from nern.evaluate import CPU_EVAL_ACTIVATION_BYTES, eval_batch_size

    assert CPU_EVAL_ACTIVATION_BYTES == 4 << 20
    net = create_target("resnet20")
    net.load_state_dict(resnet20_sd)
    net.train()
    before = net.bn1.running_mean.clone()
    assert eval_batch_size("cpu", net, (3, 32, 32)) == 64
    assert net.training and torch.equal(net.bn1.running_mean, before)  # mode and statistics untouched
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())  # 64×64×64 floats = 1 MiB per image
    assert eval_batch_size("cpu", wide, (3, 64, 64)) == 8  # 4 would fit; the floor is 8
    assert eval_batch_size("cpu", nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (3, 2, 2)) == 256
    assert eval_batch_size("cuda", net, (3, 32, 32)) == 4096
    assert eval_batch_size("cpu") == 64


def test_top1_does_not_depend_on_the_batch_size(resnet20_sd):
    from nern.evaluate import top1

    net = create_target("resnet20")
    net.load_state_dict(resnet20_sd)
    images, labels = load_labelled("cifar10-test", 32, 300)
    by_hand, _ = _top1_by_hand(resnet20_sd, images, labels)
    assert top1(net, None, images, labels) == top1(net, None, images, labels, batch_size=300) == by_hand
