import numpy as np
import pytest
import torch
from PIL import Image

from nern.data import InputSource, load_images, normalize, resolve_dataset
from nern.errors import DataError


def test_image_folder_is_read_resized_and_unlabelled(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images, labels = load_images(str(tmp_path), 32)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8 and labels is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        load_images(str(empty), 32)


def test_named_datasets_resolve_and_bad_paths_are_clear():
    assert resolve_dataset("cifar10").suffix == ".npz"
    images, labels = load_images("cifar10-test", 32)
    assert images.shape[1:] == (3, 32, 32) and labels is not None and len(labels) == len(images)
    with pytest.raises(DataError, match="data not found"):
        resolve_dataset("/nope/nothing.npz")


def test_normalize_uses_the_imagenet_constants():
    x = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(normalize(x).flatten(), expected)


def test_crop_and_flip_are_shifts_and_mirrors_of_the_padded_image():
    src = InputSource("noise", 8, True, torch.Generator().manual_seed(0))
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = src._crop_flip(x, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        found = False
        for oy in range(5):
            for ox in range(5):
                win = padded[b, :, oy : oy + 8, ox : ox + 8]
                if torch.equal(out[b], win) or torch.equal(out[b], win.flip(-1)):
                    found = True
        assert found


def test_noise_mode_is_uniform_in_minus_two_two_and_seeded():
    a = InputSource("noise", 32, False, torch.Generator().manual_seed(1)).next_batch(16)
    b = InputSource("noise", 32, False, torch.Generator().manual_seed(1)).next_batch(16)
    assert torch.equal(a, b) and a.min() >= -2 and a.max() <= 2 and a.shape == (16, 3, 32, 32)


def test_batches_follow_the_generator_draws_by_hand():
    """The batch is an independent recomputation from the same draws: the epoch order, then per
    batch the row offsets, the column offsets and the flips (the CPU stream of every release)."""
    src = InputSource("cifar10", 32, True, torch.Generator().manual_seed(3))
    batch = src.next_batch(5)
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(len(src), generator=gen)
    oy, ox = torch.randint(0, 9, (5,), generator=gen), torch.randint(0, 9, (5,), generator=gen)
    flip = torch.rand(5, generator=gen) < 0.5
    for i in range(5):
        padded = torch.nn.functional.pad(src.images[order[i]], (4, 4, 4, 4))
        crop = padded[:, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        crop = crop.flip(-1) if flip[i] else crop
        assert torch.equal(batch[i], normalize(crop[None])[0])


def test_resuming_an_input_source_gives_the_same_batches():
    src = InputSource("cifar10", 32, True, torch.Generator().manual_seed(5))
    src.next_batch(7)
    state = src.state_dict()
    expected = [src.next_batch(7) for _ in range(3)]
    resumed = InputSource("cifar10", 32, True, torch.Generator().manual_seed(99))
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next_batch(7)) for a in expected)
    assert src.images.device == src.device == torch.device("cpu")
