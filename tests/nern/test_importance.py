"""Importance maps: the relative error by hand, the artifact, pruning by scores, the curve, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nern.checkpoint import load_state_dict
from nern.cli import main
from nern.config import FitConfig
from nern.data import load_labelled
from nern.evaluate import evaluate_weights
from nern.importance import (
    ZERO_GUARD,
    ImportanceMaps,
    importance_maps,
    prune_by_scores,
    pruning_curve,
    pruning_scores,
)
from nern.package import reconstruct, save_package
from nern.train import fit

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "nern" / "assets" / "resnet20-12fca82f.th"


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_state_dict(CKPT)


@pytest.fixture(scope="module")
def package(sd):
    cfg = FitConfig(steps=5, hidden=16, permute="infilter", w_kd=0, w_fmd=0, threads=1)
    return fit(sd, cfg, source_sha256=None).package


@pytest.fixture(scope="module")
def eval_subset():
    return load_labelled("cifar10-test", 32, 500)


def test_relative_error_map_by_hand(package, sd):
    maps = importance_maps(package, sd)
    rec = reconstruct(package, sd)  # the public reconstruction, independent of the maps' code
    assert maps.layers == [ly.name for ly in package.layers()]
    for name in maps.layers:
        w, w_hat = sd[name].double().numpy(), rec[name].double().numpy()
        floor = ZERO_GUARD * np.abs(w).max()  # the zero guard; the plain formula above it
        assert np.mean(np.abs(w) < floor) < 1e-3
        np.testing.assert_allclose(maps.weight_error[name].numpy(),
                                   np.abs(w - w_hat) / np.maximum(np.abs(w), floor), rtol=1e-5)
    # aggregates on one layer, by explicit loops
    name = "layer1.0.conv1.weight"
    e = maps.weight_error[name].double().numpy()
    c_out, c_in = e.shape[:2]
    kern = np.array([[e[f, c].mean() for c in range(c_in)] for f in range(c_out)])
    filt = np.array([e[f].mean() for f in range(c_out)])
    np.testing.assert_allclose(maps.kernel_error[name].numpy(), kern, rtol=1e-5)
    np.testing.assert_allclose(maps.filter_error[name].numpy(), filt, rtol=1e-5)


def test_zero_weights_are_guarded(package, sd):
    name = "layer2.0.conv2.weight"
    zeroed = dict(sd)
    zeroed[name] = sd[name].clone()
    zeroed[name][3, 5, 1, 1] = 0.0
    maps = importance_maps(package, zeroed)
    e = maps.weight_error[name]
    assert bool(torch.isfinite(e).all())
    w_hat = reconstruct(package, zeroed)[name][3, 5, 1, 1]
    floor = ZERO_GUARD * float(zeroed[name].abs().max())
    assert float(e[3, 5, 1, 1]) == pytest.approx(abs(float(w_hat)) / floor, rel=1e-5)


def test_artifact_round_trip(package, sd, tmp_path):
    maps = importance_maps(package, sd)
    maps.save(tmp_path)
    index = json.loads((tmp_path / "importance.json").read_text())
    assert list(index["layers"]) == maps.layers
    assert index["layers"]["conv1.weight"]["shape"] == [16, 3, 3, 3]
    back = ImportanceMaps.load(tmp_path)
    for name in maps.layers:
        assert torch.equal(back.weight_error[name], maps.weight_error[name])
        assert torch.equal(back.kernel_error[name], maps.kernel_error[name])
        assert torch.equal(back.filter_error[name], maps.filter_error[name])


def test_prune_by_scores_by_hand():
    w = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 6.0])}
    s = {"a": torch.tensor([0.9, 0.1, 0.5, 0.2]), "b": torch.tensor([0.95, 0.3])}
    out = prune_by_scores(w, s, 0.5)  # the 3 highest scores: 0.95 (b0), 0.9 (a0), 0.5 (a2)
    assert out["a"].tolist() == [0.0, 2.0, 0.0, 4.0]
    assert out["b"].tolist() == [0.0, 6.0]
    mag = prune_by_scores(w, pruning_scores("magnitude", w), 0.5)  # the 3 smallest |w|
    assert mag["a"].tolist() == [0.0, 0.0, 0.0, 4.0] and mag["b"].tolist() == [5.0, 6.0]
    assert prune_by_scores(w, s, 0.0)["a"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_pruning_curve_starts_at_the_original_accuracy(package, sd, eval_subset):
    images, labels = eval_subset
    model = package.original_network(sd)
    maps = importance_maps(package, sd)
    rows = pruning_curve(model, sd, maps, images, labels, fractions=[0.0, 0.5])
    original = evaluate_weights(model, None, images, labels)["original_top1"]
    assert rows[0] == {"fraction": 0.0, "importance": original, "magnitude": original, "random": original}
    assert rows[1]["fraction"] == 0.5
    # at 50 % random pruning destroys the network; magnitude pruning does not
    assert rows[1]["random"] < 30.0 < rows[1]["magnitude"]


def test_importance_cli(package, tmp_path, capsys):
    src = tmp_path / "p.nern"
    save_package(package, src)
    out = tmp_path / "imp"
    def args(out=out, data="cifar10-test", *extra):
        return ["importance", str(src), "--checkpoint", str(CKPT), "--data", data, "--limit", "100",
                "--fractions", "0,0.5", "--out", str(out), *extra]

    assert main(args()) == 0
    heatmaps = sorted((out / "heatmaps").iterdir())
    assert len(heatmaps) == 19 and heatmaps[0].name == "00_conv1.png"
    for png in [*heatmaps, out / "pruning_curve.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((out / "pruning_curve.json").read_text())
    assert [r["fraction"] for r in curve["curve"]] == [0.0, 0.5]
    assert curve["curve"][0]["importance"] == curve["original_top1"]
    assert (out / "importance.safetensors").is_file() and (out / "importance.json").is_file()
    assert "| 50% |" in capsys.readouterr().out

    # user errors: one line, exit 2, nothing written
    assert main(args()) == 2  # --out exists and is not empty
    bad = tmp_path / "bad"
    assert main(args(bad, "cifar10-test", "--methods", "importance,bogus")) == 2
    assert main(args(bad, str(tmp_path / "none.npz"))) == 2
    assert not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imp", "p.nern"]
    assert capsys.readouterr().err.count("nern: error:") == 3
