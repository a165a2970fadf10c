"""scripts/device_bundle.py: the data packed for a GPU machine comes back bit for bit."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device_bundle.py"
spec = importlib.util.spec_from_file_location("device_bundle", SCRIPT)
device_bundle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_bundle)


def test_image_encoding_round_trips_exactly_including_wrap_around():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 6, 3), dtype=np.uint8)
    images[0] = 255
    images[1, :, ::2] = 0  # 0 → 255 → 0 steps: differences that wrap mod 256
    blob = device_bundle.encode_images(images)
    back = device_bundle.decode_images(blob, images.shape)
    assert back.dtype == np.uint8 and back.shape == images.shape
    np.testing.assert_array_equal(back, images)


def _fake_shared(folder: Path, rng) -> dict[str, dict[str, np.ndarray]]:
    folder.mkdir()
    for name in device_bundle.CHECKPOINTS:
        (folder / name).write_bytes(rng.bytes(100))
    arrays = {}
    for name in device_bundle.IMAGE_FILES:
        arrays[name] = {"images": rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8),
                        "labels": rng.integers(0, 10, size=9), "class_rank": np.arange(9)}
        np.savez_compressed(folder / name, **arrays[name])
    return arrays


def test_packed_data_unpacks_to_the_same_files(tmp_path):
    rng = np.random.default_rng(1)
    arrays = _fake_shared(tmp_path / "shared", rng)
    device_bundle.pack_data(tmp_path / "shared", tmp_path / "bundle")
    device_bundle.unpack_data(tmp_path / "bundle", tmp_path / "out")
    for name in device_bundle.CHECKPOINTS:
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "shared" / name).read_bytes()
    for name, original in arrays.items():
        with np.load(tmp_path / "out" / name) as z:
            assert sorted(z.files) == sorted(original)
            for key, value in original.items():
                np.testing.assert_array_equal(z[key], value)


def test_unpacking_refuses_images_that_do_not_match_their_checksum(tmp_path):
    rng = np.random.default_rng(2)
    _fake_shared(tmp_path / "shared", rng)
    device_bundle.pack_data(tmp_path / "shared", tmp_path / "bundle")
    name = device_bundle.IMAGE_FILES[0]
    other = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "bundle" / f"{name}.images.xz").write_bytes(device_bundle.encode_images(other))
    with pytest.raises(SystemExit, match="differ from the packed ones"):
        device_bundle.unpack_data(tmp_path / "bundle", tmp_path / "out")


def test_device_run_refuses_data_that_is_not_the_full_cifar10_files(tmp_path):
    """Without the full files the library would fall back to the demo sample and the GPU checks
    would report figures on other data: scripts/device_run.sh stops before running anything."""
    _fake_shared(tmp_path / "shared", np.random.default_rng(3))  # 9 images per file
    device_bundle.pack_data(tmp_path / "shared", tmp_path / "bundle" / "data")
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_BUNDLE": str(tmp_path / "bundle"),
           "DEVICE_WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(SCRIPT.parent / "device_run.sh"), "smoke"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "cifar10-test resolves to" in done.stderr and "(9 images), not the full file" in done.stderr
    assert (tmp_path / "work" / "nern_data" / "cifar10_test.npz").is_file()  # it got as far as unpacking
    assert not (tmp_path / "out").exists()  # and ran no check
