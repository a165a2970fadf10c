import numpy as np
import pytest
import torch

from nern.config import FitConfig
from nern.errors import PackageError
from nern.package import load_package, predict_weights, reconstruct, save_package
from nern.targets import create_target
from nern.train import fit


@pytest.fixture(scope="module")
def fitted(resnet20_sd, tmp_path_factory):
    cfg = FitConfig(steps=2, hidden=24, layers=3, emb_levels=5, w_kd=0, w_fmd=0, threads=1,
                    permute="crossfilter")
    result = fit(resnet20_sd, cfg, source_sha256="feedbeef")
    path = tmp_path_factory.mktemp("pkg") / "r20.nern"
    save_package(result.package, path)
    return result, path


def test_round_trip_loads_strictly_into_the_original_architecture(fitted, resnet20_sd):
    result, path = fitted
    package = load_package(path)
    rec = reconstruct(package, resnet20_sd)
    model = create_target("resnet20")
    model.load_state_dict(rec, strict=True)
    # unmodeled tensors are the original's, modeled ones are the predictor's
    assert torch.equal(rec["bn1.weight"], resnet20_sd["bn1.weight"])
    assert torch.equal(rec["linear.weight"], resnet20_sd["linear.weight"])
    in_memory = predict_weights(result.package)
    for name, w in in_memory.items():
        assert torch.allclose(rec[name], w)
        assert not torch.equal(rec[name], resnet20_sd[name])


def test_metadata_is_self_describing(fitted, resnet20_sd):
    _, path = fitted
    meta = load_package(path).meta
    assert meta["target"] == {"arch": "resnet20", "kwargs": {"num_classes": 10}}
    assert meta["predictor"] == {"in_dim": 30, "hidden": 24, "layers": 3, "kernel_size": 3}
    assert meta["embedding"] == {"levels": 5, "base": 1.2}
    assert meta["source_sha256"] == "feedbeef" and meta["permutation"]["kind"] == "crossfilter"
    assert len(meta["layers"]) == 19 and meta["summary"]["steps"] == 2
    unmodeled = set(meta["unmodeled"]["names"])
    assert "linear.weight" in unmodeled and "layer1.0.conv1.weight" not in unmodeled
    assert meta["unmodeled"]["bytes"] == sum(resnet20_sd[k].numel() * 4 for k in unmodeled)


def test_sizes_count_the_bit_packed_permutation(fitted):
    result, path = fitted
    sizes = load_package(path).size_report()
    # ResNet20: 19 layers; bits per index = ceil(log2(C_out*C_in)) per layer
    layers = result.package.meta["layers"]
    bits = sum(np.prod(d["shape"][:2]) * int(np.ceil(np.log2(np.prod(d["shape"][:2])))) for d in layers)
    expected = sum(int(np.ceil(np.prod(d["shape"][:2]) * np.ceil(np.log2(np.prod(d["shape"][:2]))) / 8)) for d in layers)
    assert sizes["permutation_bytes"] == expected and expected >= bits / 8
    assert sizes["package_bytes"] == path.stat().st_size
    n_params = sum(t.numel() for k, t in result.package.tensors.items() if k.startswith("predictor."))
    assert sizes["predictor_bytes"] == 4 * n_params
    assert sizes["package_bytes"] > sizes["predictor_bytes"] + sizes["permutation_bytes"]


def test_permutation_survives_the_package(fitted):
    result, path = fitted
    a = result.package.permutations()
    b = load_package(path).permutations()
    for name in a:
        assert np.array_equal(a[name].path(), b[name].path())


def test_bad_packages_and_wrong_checkpoints_are_refused(fitted, tmp_path):
    _, path = fitted
    junk = tmp_path / "junk.nern"
    junk.write_bytes(b"not a package")
    with pytest.raises(PackageError, match="not a NeRN package"):
        load_package(junk)
    with pytest.raises(PackageError, match="not found"):
        load_package(tmp_path / "missing.nern")
    other = create_target("resnet32").state_dict()
    with pytest.raises(PackageError, match="does not belong"):
        reconstruct(load_package(path), other)
