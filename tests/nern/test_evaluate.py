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
