"""Meta-compression: int8/fp16 codecs, global pruning, sparse storage, fine-tuning, sweep, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nern.checkpoint import load_state_dict
from nern.cli import main
from nern.compress import (
    baseline_rows,
    compress_package,
    fine_tune,
    finetune_run,
    global_magnitude_masks,
    prune_predictor,
)
from nern.config import FitConfig
from nern.data import load_labelled
from nern.errors import PackageError
from nern.evaluate import evaluate_weights
from nern.package import (
    ENCODED_FORMAT_VERSION,
    Package,
    load_package,
    load_package_bytes,
    predict_weights,
    quantize_int8,
    save_package,
)
from nern.train import fit

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "nern" / "assets" / "resnet20-12fca82f.th"
TINY = dict(steps=5, hidden=16, w_kd=0, w_fmd=0, threads=1)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_state_dict(CKPT)


@pytest.fixture(scope="module")
def package(sd) -> Package:
    return fit(sd, FitConfig(permute="none", **TINY), source_sha256=None).package


@pytest.fixture(scope="module")
def permuted_package(sd) -> Package:
    return fit(sd, FitConfig(permute="infilter", **TINY), source_sha256=None).package


def _predictor_state(p: Package) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in p.predictor().state_dict().items()}


# ---- codecs ---------------------------------------------------------------------------------

def test_int8_per_channel_matches_hand_computation():
    w = torch.tensor([[1.0, -0.4, 0.26], [0.0, 0.0, 0.0], [0.031, -2.54, 1.0]])
    q, scale = quantize_int8(w)
    # scales: max|row| / 127, and 1 for the all-zero row
    assert torch.allclose(scale, torch.tensor([1 / 127, 1.0, 2.54 / 127]))
    # 1·127 = 127, −0.4·127 = −50.8, 0.26·127 = 33.02; 0.031/0.02 = 1.55, 1/0.02 = 50
    assert q.tolist() == [[127, -51, 33], [0, 0, 0], [2, -127, 50]]
    err = (q.float() * scale[:, None] - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())


def test_int8_and_fp16_packages_decode_to_the_quantised_predictor(package):
    state = _predictor_state(package)
    for dtype in ("fp16", "int8"):
        small, _ = compress_package(package, quantize=dtype)
        back = load_package_bytes(small.to_bytes())
        assert back.meta["format_version"] == ENCODED_FORMAT_VERSION
        assert back.meta["predictor"]["encoding"]["dtype"] == dtype
        got = _predictor_state(back)
        for name, w in state.items():
            if dtype == "fp16" or w.dim() == 1:  # biases are fp16 in both
                assert torch.equal(got[name], w.half().float()), name
            else:
                bound = w.abs().amax(dim=1, keepdim=True) / 127 / 2
                assert bool(((got[name] - w).abs() <= bound + 1e-7).all()), name
        # the regenerated kernels come out as float32 through the unchanged public path
        weights = predict_weights(back)
        assert all(v.dtype == torch.float32 for v in weights.values())


def test_plain_packages_stay_version_1_and_load(package, tmp_path):
    assert package.meta["format_version"] == 1 and "encoding" not in package.meta["predictor"]
    save_package(package, tmp_path / "p.nern")
    back = load_package(tmp_path / "p.nern")
    for k, v in _predictor_state(package).items():
        assert torch.equal(_predictor_state(back)[k], v)


def test_newer_format_is_refused(package):
    meta = {**package.meta, "format_version": ENCODED_FORMAT_VERSION + 1}
    with pytest.raises(PackageError, match="newer"):
        load_package_bytes(Package(meta=meta, tensors=package.tensors).to_bytes())


# ---- pruning and sparse storage -----------------------------------------------------------------

def test_global_magnitude_masks_by_hand():
    a = torch.tensor([[0.1, -5.0], [0.3, 2.0]])
    b = torch.tensor([[-0.2, 0.05, 4.0]])
    masks = global_magnitude_masks({"a": a, "b": b}, 3 / 7)  # the 3 smallest |w|: 0.05, 0.1, 0.2
    assert masks["a"].tolist() == [[False, True], [True, True]]
    assert masks["b"].tolist() == [[False, False, True]]


def test_pruned_sparse_package_is_smaller_and_reloads_exactly(package, tmp_path):
    state = _predictor_state(package)
    small, report = compress_package(package, prune=0.5)
    dense_size = save_package(package, tmp_path / "dense.nern")
    sparse_size = save_package(small, tmp_path / "sparse.nern")
    assert (tmp_path / "sparse.nern").stat().st_size == sparse_size
    assert sparse_size < dense_size and report["package_bytes"] == sparse_size
    # predictor bytes by hand: matrices = float32 non-zeros + a 1-bit mask; biases dense
    back = _predictor_state(load_package(tmp_path / "sparse.nern"))
    expect = sum(4 * int((back[n] != 0).sum()) + (w.numel() + 7) // 8 if w.dim() == 2 else 4 * w.numel()
                 for n, w in state.items())
    assert report["predictor_bytes"] == expect
    assert expect < 0.6 * sum(4 * w.numel() for w in state.values())
    matrices = [n for n, w in state.items() if w.dim() == 2]
    total = sum(state[n].numel() for n in matrices)
    zeros = sum(int((back[n] == 0).sum()) for n in matrices)
    assert zeros == round(0.5 * total)
    # independent check of "global magnitude": every kept |w| ≥ every pruned |w|
    kept = torch.cat([state[n][back[n] != 0].abs() for n in matrices])
    pruned = torch.cat([state[n][back[n] == 0].abs() for n in matrices])
    assert float(kept.min()) >= float(pruned.max())
    for n, w in state.items():  # exact: surviving weights untouched, biases kept
        expect = w if w.dim() == 1 else torch.where(back[n] != 0, w, torch.zeros_like(w))
        assert torch.equal(back[n], expect), n


def test_size_report_counts_permutation_and_header(permuted_package):
    small, report = compress_package(permuted_package, prune=0.5, quantize="int8")
    r = small.size_report()
    assert r["permutation_bytes"] > 0
    assert r["package_bytes"] == len(small.to_bytes())
    assert r["package_bytes"] == r["predictor_bytes"] + r["permutation_bytes"] + r["other_tensor_bytes"] + r["header_bytes"]
    # unmodeled: 4 BN tensors over 688 channels (16 + 6·16 + 6·32 + 6·64), linear 64×10 + 10
    assert r["unmodeled_bytes"] == 4 * (4 * 688 + 64 * 10 + 10)
    assert set(small.meta["unmodeled"]["names"]) >= {"linear.weight", "linear.bias", "bn1.weight"}


# ---- fine-tuning -----------------------------------------------------------------------------------

def test_finetune_run_uses_the_package_layout(permuted_package, sd):
    state = _predictor_state(permuted_package)
    run = finetune_run(permuted_package, sd, state, steps=2)
    ours = run.predicted_weights()
    theirs = predict_weights(permuted_package)
    for n, w in theirs.items():
        assert torch.allclose(ours[n].cpu(), w, atol=1e-6), n


def test_finetune_keeps_pruned_weights_at_zero(permuted_package, sd):
    state, masks = prune_predictor(_predictor_state(permuted_package), 0.5)
    tuned = fine_tune(permuted_package, sd, state, masks, steps=3, lr=1e-3)
    changed = 0
    for n, w in tuned.items():
        if n in masks:
            assert bool((w[~masks[n]] == 0).all()), n
            changed += int((w[masks[n]] != state[n][masks[n]]).sum())
    assert changed > 0


# ---- baselines, sweep and CLI -------------------------------------------------------------------

def test_baseline_bytes_by_hand(sd):
    conv = {k: v for k, v in sd.items() if k.endswith("weight") and v.dim() == 4}
    n = sum(v.numel() for v in conv.values())
    assert n == 267_696  # ResNet20's modeled conv weights (shared/data README)
    rows = baseline_rows(conv, [60_000])
    by = {(r["method"], r["setting"].split(",")[0]): r for r in rows}
    assert by[("original", "fp16")]["bytes"] == 2 * n
    assert by[("original", "int8 per-channel PTQ")]["bytes"] == n + 4 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    mask_bytes = sum((v.numel() + 7) // 8 for v in conv.values())
    fp16 = by[("magnitude-pruned", "fp16")]
    keep = sum(int((w != 0).sum()) for w in fp16["weights"].values())
    assert keep == (60_000 - mask_bytes) // 2 and fp16["bytes"] <= 60_000


def test_compress_cli_writes_a_smaller_package_and_refuses_bad_input(package, tmp_path, capsys):
    src = tmp_path / "p.nern"
    save_package(package, src)
    out = tmp_path / "small.nern"
    assert main(["compress", str(src), "--prune", "0.5", "--quantize", "int8", "--out", str(out)]) == 0
    assert out.stat().st_size < src.stat().st_size
    load_package(out).predictor()

    bad = tmp_path / "bad.nern"
    assert main(["compress", str(src), "--prune", "1.5", "--out", str(bad)]) == 2
    assert main(["compress", str(src), "--finetune-steps", "3", "--out", str(bad)]) == 2
    assert main(["compress", str(tmp_path / "missing.nern"), "--out", str(bad)]) == 2
    assert not bad.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nern", "small.nern"]
    err = capsys.readouterr().err
    assert err.count("nern: error:") == 3


def test_sweep_cli_table_and_plot(package, sd, tmp_path):
    src = tmp_path / "p.nern"
    save_package(package, src)
    out = tmp_path / "sweep"
    args = ["compress-sweep", str(src), "--checkpoint", str(CKPT), "--data", "cifar10-test", "--limit", "200",
            "--fractions", "0,0.5", "--dtypes", "fp32,int8", "--out", str(out)]
    assert main(args) == 0
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = json.loads((out / "sweep.json").read_text())
    rows = sweep["rows"]
    nern = [r for r in rows if r["method"] == "nern"]
    assert len(nern) == 4 and all(r["bytes"] > r["predictor_bytes"] for r in nern)
    assert sweep["unmodeled_bytes"] == package.meta["unmodeled"]["bytes"]
    # the fp32 original's row is the original's accuracy, scored by the evaluation module
    images, labels = load_labelled("cifar10-test", 32, 200)
    ref = evaluate_weights(package.original_network(sd), None, images, labels)["original_top1"]
    fp32 = next(r for r in rows if r["method"] == "original" and r["setting"] == "fp32")
    assert fp32["top1"] == ref
    for r in nern:  # "best baseline" only compares baselines within the row's bytes
        fits = [b["top1"] for b in rows if b["method"] != "nern" and b["bytes"] <= r["bytes"]]
        assert r["best_baseline_top1"] == (max(fits) if fits else None)
    assert "unmodeled" in (out / "sweep.md").read_text()
    # a second run into the same (now non-empty) folder is refused and changes nothing
    before = sorted(p.name for p in out.iterdir())
    assert main(args) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]

