"""File chores shared by the library, the service and the CLIs: atomic writes and hashing.

    atomic_write(path, lambda tmp: torch.save(state, tmp))   # readers never see half a file
    atomic_write_bytes(path, data)
    sha256_file(path), sha256_and_size(path)

`atomic_write` hands the writer a temporary path beside the target (same folder, so the final
rename is atomic), renames it into place only when the writer returned, and removes it on any
error: a failed write leaves neither a partial target nor a stray temporary file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CHUNK = 1 << 20


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A hidden, unique name in `path`'s folder (`.name.<random>.tmp`)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], T]) -> T:
    """Run `write(tmp)` and rename tmp to `path`; returns what `write` returned."""
    target = Path(path)
    tmp = temporary_sibling(target)
    try:
        result = write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Write `data` atomically; returns its length."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return len(data)


def sha256_and_size(path: str | os.PathLike) -> tuple[str, int]:
    """Hex sha256 and byte count of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: str | os.PathLike) -> str:
    return sha256_and_size(path)[0]


__all__ = ["atomic_write", "atomic_write_bytes", "sha256_and_size", "sha256_file", "temporary_sibling"]
