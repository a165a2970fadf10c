import io
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save as st_save

from nern.checkpoint import load_state_dict, load_state_dict_bytes
from nern.errors import CheckpointError, UnsafeCheckpointError
from nern.targets import create_target


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def sd():
    return create_target("resnet20").state_dict()


def _same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_plain_wrapped_prefixed_and_safetensors_variants(sd):
    _same(load_state_dict_bytes(_bytes(sd)), sd)
    _same(load_state_dict_bytes(_bytes({"state_dict": sd, "epoch": 3})), sd)
    _same(load_state_dict_bytes(_bytes({"model": sd})), sd)
    _same(load_state_dict_bytes(_bytes({f"module.{k}": v for k, v in sd.items()})), sd)
    _same(load_state_dict_bytes(st_save({k: v.contiguous() for k, v in sd.items()})), sd)


def test_shipped_checkpoint_loads_with_prefix_stripped(resnet20_sd):
    assert "conv1.weight" in resnet20_sd and not any(k.startswith("module.") for k in resnet20_sd)
    model = create_target("resnet20")
    model.load_state_dict(resnet20_sd, strict=True)


def test_whole_pickled_model_is_refused_with_advice():
    with pytest.raises(UnsafeCheckpointError, match=r"model.state_dict\(\)"):
        load_state_dict_bytes(_bytes(create_target("resnet20")))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/nern-pwned",))


def test_malicious_pickle_never_runs(tmp_path):
    if os.path.exists("/tmp/nern-pwned"):
        os.remove("/tmp/nern-pwned")
    for data in (_bytes({"x": _Evil()}), pickle.dumps({"x": _Evil()})):
        with pytest.raises(CheckpointError):
            load_state_dict_bytes(data)
    assert not os.path.exists("/tmp/nern-pwned")


def test_nan_weights_name_the_tensor(sd):
    bad = dict(sd)
    bad["layer2.0.conv1.weight"] = bad["layer2.0.conv1.weight"].clone()
    bad["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="'layer2.0.conv1.weight' holds NaN"):
        load_state_dict_bytes(_bytes(bad))


def test_garbage_non_tensor_entries_and_missing_file(tmp_path):
    with pytest.raises(CheckpointError):
        load_state_dict_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="'lr' is a float"):
        load_state_dict_bytes(_bytes({"w": torch.ones(2), "lr": 0.1}))
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")


def test_zip_bomb_is_refused_before_reading():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"\0" * (64 * 2**20))
    with pytest.raises(CheckpointError, match="expansion"):
        load_state_dict_bytes(buf.getvalue())
