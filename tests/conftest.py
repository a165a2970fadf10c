"""Shared fixtures: the real checkpoints and data (../shared/data or $NERN_DATA_DIR), with the
shipped ResNet20 and CIFAR-10 samples as the fallback a fresh clone has."""

from __future__ import annotations

from pathlib import Path

import pytest

from nern.assets import default_checkpoint
from nern.data import data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path | None:
    return data_dir()


@pytest.fixture(scope="session")
def resnet20_path() -> Path:
    return default_checkpoint()


@pytest.fixture(scope="session")
def resnet20_sd(resnet20_path):
    from nern.checkpoint import load_state_dict

    return load_state_dict(resnet20_path)


@pytest.fixture(scope="session")
def images_npz(tmp_path_factory):
    """20 images of the shipped training sample, as an .npz (a teacher cache of ~21 MiB)."""
    import numpy as np

    from nern.assets import ASSETS

    with np.load(ASSETS / "cifar10_sample_train.npz") as z:
        images = z["images"][:20]
    path = tmp_path_factory.mktemp("data") / "twenty.npz"
    np.savez(path, images=images)
    return str(path)


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty permutation cache for the test."""
    monkeypatch.setenv("NERN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
