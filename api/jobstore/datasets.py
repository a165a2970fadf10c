"""Data parts (.npz) of a job: the one validator, used by the API at submission and by the
worker before it runs, so what is accepted is what runs; and where a spec's `data` name points.

An .npz is checked from its zip directory and the .npy headers, before any array is read:
at most `MAX_ENTRIES` entries, declared (uncompressed) sizes summing to at most `max_bytes`
(absolute, so a small archive cannot expand into gigabytes), no object (pickled) arrays,
`images` uint8 [N, H, W, 3]; then only `labels` is read: integers, one per image, each in
[0, num_classes). Messages name the part, never a server path.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

MAX_ENTRIES = 64
# Names the library resolves itself (nern.data): the shipped CIFAR-10 subsets, and noise.
BUILTIN_DATA = {"data": ("cifar10", "cifar10-test", "noise"), "eval_data": ("cifar10", "cifar10-test")}
# Uploaded parts live beside the stored checkpoint (checkpoint.*), so they may not be named so.
RESERVED_PREFIX = "checkpoint."


class DataPartError(ValueError):
    """A data part that cannot be used; the message names the part, not a file path."""


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def check_npz(path: Path, name: str, *, labelled: bool, num_classes: int | None, max_bytes: int) -> int:
    """Validate a data part; returns its image count. Raises DataPartError naming `name`."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise DataPartError(f"part {name!r} has {len(infos)} entries; at most {MAX_ENTRIES}")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise DataPartError(
                    f"part {name!r} expands to {declared} bytes; the limit is {max_bytes} (NERN_MAX_DATA_BYTES)"
                )
            arrays = {}
            for info in infos:
                key = info.filename.removesuffix(".npy")
                if key in ("images", "labels"):
                    arrays[key] = (info, *_header(zf, info))
            if "images" not in arrays:
                raise DataPartError(f"part {name!r} needs an 'images' array [N, H, W, 3] (uint8)")
            _, shape, dtype = arrays["images"]
            if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or 0 in shape:
                raise DataPartError(
                    f"part {name!r}: 'images' must be uint8 [N, H, W, 3] (RGB, 0-255), got {dtype} {list(shape)}"
                )
            n = shape[0]
            if "labels" not in arrays:
                if labelled:
                    raise DataPartError(f"part {name!r} is evaluation data and needs 'labels' [N] matching 'images'")
                return n
            info, lshape, ldtype = arrays["labels"]
            if ldtype.hasobject or ldtype.kind not in "iu" or lshape != (n,):
                raise DataPartError(
                    f"part {name!r}: 'labels' must be integers [N] matching 'images' ({n}), got {ldtype} {list(lshape)}"
                )
            if math.prod(lshape) * ldtype.itemsize > max_bytes:  # cannot happen past the check above
                raise DataPartError(f"part {name!r}: 'labels' too large")
            with zf.open(info) as f:
                labels = np.lib.format.read_array(f, allow_pickle=False)
    except DataPartError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataPartError(f"part {name!r} is not a readable .npz archive ({type(e).__name__})") from None
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataPartError(
            f"part {name!r}: labels must lie in [0, {num_classes}) for this network; found "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return n


def valid_part_name(name: str) -> bool:
    return name.endswith(".npz") and not name.lower().startswith(RESERVED_PREFIX) and name not in (".npz",)


def resolve_data(value: str | None, input_dir: Path, data_dir: Path | None) -> str | None:
    """Where a spec's `data` / `eval_data` value points on this machine (None stays None).

    Built-in names stay names; an uploaded part's name → the job's input folder; a plain file
    name → NERN_DATA_DIR. Specs stored before parts kept their names held absolute paths inside
    the job's input folder; those are still honoured.
    """
    if value is None or value in BUILTIN_DATA["data"]:
        return value
    if value in ("", ".", "..") or "\\" in value:
        return value
    if "/" not in value:
        if (input_dir / value).is_file():
            return str(input_dir / value)
        if data_dir is not None and (data_dir / value).is_file():
            return str(data_dir / value)
        return value
    p = Path(value)
    if p.is_absolute() and p.parent == input_dir:
        return value
    return value
