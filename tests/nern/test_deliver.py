"""nern.deliver: the served package (compressed or not), its evaluation, importance maps, summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from nern.checkpoint import load_state_dict
from nern.config import CompressConfig, FitConfig
from nern.data import load_labelled
from nern.deliver import deliver
from nern.errors import CancelledError
from nern.evaluate import evaluate_weights
from nern.package import predict_weights, reconstruct
from nern.train import fit

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "nern" / "assets" / "resnet20-12fca82f.th"
CONFIG = FitConfig(steps=3, hidden=16, emb_levels=4, w_kd=0, w_fmd=0, threads=1, permute="none",
                   eval_data="cifar10-test", eval_limit=100)


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_state_dict(CKPT)


@pytest.fixture(scope="module")
def result(sd):
    return fit(sd, CONFIG, source_sha256=None)


def test_without_compression_the_fitted_package_is_served_with_fits_numbers(sd, result):
    out = deliver(result, sd, CONFIG)
    assert out.package is result.package and out.uncompressed is None
    s = out.summary
    assert s["compression"] is None
    assert all(s[k] == result.summary[k] for k in ("reconstructed_top1", "agreement", "relative_weight_error"))
    assert len(out.importance.layers) == 19
    assert list(s["importance"]["mean_relative_error"]) == out.importance.layers
    rebuilt = reconstruct(result.package, sd)
    assert all(torch.equal(out.reconstructed[k], rebuilt[k]) for k in rebuilt)


def test_compressed_package_is_served_evaluated_and_mapped(sd, result):
    seen = []
    out = deliver(result, sd, CONFIG, CompressConfig(prune=0.5, quantize="int8", finetune_steps=2),
                  on_progress=seen.append)
    assert out.uncompressed is result.package and out.package is not result.package
    assert [(p.stage, p.step, p.total_steps) for p in seen] == [("compressing", 1, 2), ("compressing", 2, 2)]
    assert "rec" in seen[0].losses and "lr" not in seen[0].losses and seen[0].lr > 0
    s = out.summary
    c = s["compression"]
    assert (c["prune"], c["quantize"], c["finetune_steps"]) == (0.5, "int8", 2)
    assert s["package_bytes"] == out.package.size_report()["package_bytes"] < c["source_package_bytes"]
    assert c["uncompressed"]["reconstructed_top1"] == result.summary["reconstructed_top1"]

    # The summary's accuracy is the served package's on fit's evaluation images.
    images, labels = load_labelled(CONFIG.eval_data, 32, CONFIG.eval_limit)
    predicted = predict_weights(out.package)
    expected = evaluate_weights(out.package.original_network(sd), predicted, images, labels)
    assert {k: s[k] for k in expected} == expected
    assert all(torch.equal(out.reconstructed[k], predicted[k]) for k in predicted)
    # The importance maps are of the served package, not of the fp32 one.
    name = out.importance.layers[0]
    err = (sd[name] - predicted[name]).abs() / sd[name].abs().clamp_min(sd[name].abs().max() * 1e-6)
    assert torch.allclose(out.importance.weight_error[name], err, rtol=1e-4, atol=1e-6)


def test_compression_stops_when_asked(sd, result):
    with pytest.raises(CancelledError):
        deliver(result, sd, CONFIG, CompressConfig(prune=0.5), should_stop=lambda: True)


@pytest.mark.parametrize("bad", [{"prune": 1.0}, {"prune": -0.1}, {"quantize": "int4"}, {"finetune_steps": -1},
                                 {"bits": 4}])
def test_compress_config_refuses_bad_settings(bad):
    with pytest.raises(ValidationError):
        CompressConfig(**bad)
    assert CompressConfig().model_dump() == {"prune": 0.0, "quantize": "none", "finetune_steps": 0}
