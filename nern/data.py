"""Inputs for distillation and labelled data for evaluation.

Distillation never uses labels. Sources: the CIFAR-10 npz files (`images` uint8 [N, H, W, 3],
`labels` int64), a folder of images, or noise (data-free mode, U(−2, 2)). Images are normalised
with the ImageNet constants the shipped checkpoints were trained with.

Dataset names: `cifar10` is the training subset, `cifar10-test` the test set; both are read from
$NERN_DATA_DIR, else ../shared/data beside the checkout, else the small sample shipped in
`nern/assets` (enough for the demo).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from .assets import ASSETS
from .errors import DataError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}

_NAMED = {
    "cifar10": ("cifar10_train_subset.npz", "cifar10_sample_train.npz"),
    "cifar10-test": ("cifar10_test.npz", "cifar10_sample_test.npz"),
}


def data_dir() -> Path | None:
    env = os.environ.get("NERN_DATA_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside if beside.is_dir() else None


def resolve_dataset(name: str) -> Path:
    """Path of a named dataset (see module docstring) or of a user's file/folder."""
    if name in _NAMED:
        full, sample = _NAMED[name]
        d = data_dir()
        if d is not None and (d / full).is_file():
            return d / full
        return ASSETS / sample
    p = Path(name)
    if not p.exists():
        raise DataError(f"data not found: {name} (use cifar10, cifar10-test, noise, an .npz or an image folder)")
    return p


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise DataError(f"{path}: npz has no 'images' array")
            images = z["images"]
            labels = z["labels"] if "labels" in z else None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable npz file ({str(e)[:120]})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{path}: 'images' must be uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels


def _load_folder(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        except Exception as e:
            raise DataError(f"{f}: unreadable image ({str(e)[:120]})") from None
    return out


def load_images(source: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images [N, 3, H, W] and labels (or None) from a dataset name, npz or folder."""
    path = resolve_dataset(source)
    if path.is_dir():
        images, labels = _load_folder(path, image_size), None
    elif path.suffix == ".npz":
        images, labels = _load_npz(path)
    else:
        raise DataError(f"{path}: expected an .npz file or a folder of images")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(x.float(), size=(image_size, image_size), mode="bilinear",
                                            antialias=True).round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(labels).long() if labels is not None else None
    return x, y


def fixed_subset(images: torch.Tensor, labels: torch.Tensor, limit: int | None,
                 seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random subset of `limit` labelled images (the files may be class-major, so never
    the first N); the same for every caller, so scores on `--limit N` are comparable."""
    if not limit or limit >= len(labels):
        return images, labels
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit]
    return images[keep], labels[keep]


def load_labelled(source: str, image_size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled evaluation images (uint8 [N, 3, H, W]) and labels, the fixed random subset of
    `limit` images when given (see `fixed_subset`)."""
    images, labels = load_images(source, image_size)
    if labels is None:
        raise DataError(f"{source!r} has no labels; evaluation needs a labelled .npz")
    return fixed_subset(images, labels, limit)


@functools.cache
def _constants_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD on `device`, copied there once (not once per batch)."""
    return MEAN.to(device), STD.to(device)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    mean, std = _constants_on(images_u8.device)
    return (images_u8.float() / 255.0 - mean) / std


class InputSource:
    """Batches of normalised network inputs, made on the device of `generator`.

    The images live on that device and are augmented there (random crop after zero-padding 4,
    random horizontal flip), and every draw (epoch order, crop offsets, flips, noise) comes from
    `generator`, so a CUDA run assembles its batches without host round trips. On the CPU the
    draws and the batches are the ones this class has always made. `state_dict` holds the epoch
    order, the cursor and the generator's state: a resumed run draws exactly the same batches.
    """

    def __init__(self, spec: str, image_size: int, augment: bool, generator: torch.Generator,
                 memory_format: torch.memory_format = torch.contiguous_format):
        """Batches come in `memory_format` (`nern.conv_layout.activation_format` of the device)."""
        self.memory_format = memory_format
        self.noise = spec == "noise"
        self.image_size = image_size
        self.augment = augment
        self.gen = generator
        self.device = generator.device
        self.images = None if self.noise else load_images(spec, image_size)[0].to(self.device)
        self._order = torch.empty(0, dtype=torch.long, device=self.device)
        self._cursor = 0

    def __len__(self) -> int:
        return 0 if self.images is None else self.images.shape[0]

    def next_batch(self, batch_size: int) -> torch.Tensor:
        if self.noise:
            shape = (batch_size, 3, self.image_size, self.image_size)
            noise = torch.rand(shape, generator=self.gen, device=self.device) * 4 - 2
            return noise.contiguous(memory_format=self.memory_format)
        return self.batch(self.take(batch_size))

    def batch(self, which: torch.Tensor) -> torch.Tensor:
        """The normalised (and, with augment, augmented) images of rows `which`."""
        x = self.images[which]
        x = self._crop_flip(x) if self.augment else x.contiguous(memory_format=self.memory_format)
        return normalize(x)

    def take(self, n: int) -> torch.Tensor:
        """The rows of the next n images in this epoch's order (a new order each epoch)."""
        out = []
        while n > 0:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(len(self), generator=self.gen, device=self.device)
                self._cursor = 0
            part = self._order[self._cursor : self._cursor + n]
            self._cursor += len(part)
            n -= len(part)
            out.append(part)
        return torch.cat(out)

    def _crop_flip(self, x: torch.Tensor, pad: int = 4) -> torch.Tensor:
        """Random crop after zero-padding by `pad`, and random horizontal flip (vectorised)."""
        b, _, h, w = x.shape
        dev = x.device
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=self.gen, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=self.gen, device=dev)
        flip = torch.rand(b, generator=self.gen, device=dev) < 0.5
        rows = oy[:, None] + torch.arange(h, device=dev)
        cols = ox[:, None] + torch.arange(w, device=dev)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=dev)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)  # NHWC: no copy

    def state_dict(self) -> dict:
        return {"order": self._order.cpu(), "cursor": self._cursor, "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._order = state["order"].to(self.device)
        self._cursor = int(state["cursor"])
        if "generator" in state:  # states written before the inputs kept their own generator's state
            self.gen.set_state(state["generator"].cpu())
