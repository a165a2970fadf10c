"""The one loader for untrusted checkpoints: state_dicts only, never arbitrary pickles.

Accepted: a PyTorch file (zip or legacy format) holding a state_dict, or a dict wrapping one
under `state_dict` / `model`, with or without DataParallel's `module.` prefix; and safetensors.
PyTorch files are read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes

from .errors import CheckpointError, UnsafeCheckpointError

StateDict = dict[str, torch.Tensor]

MAX_ZIP_ENTRIES = 10_000
MAX_EXPANSION_RATIO = 50.0
MAX_UNCOMPRESSED_BYTES = 16 * 2**30

_HOW_TO_SAVE = "save the weights only: torch.save(model.state_dict(), path)"


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    header_len = int.from_bytes(data[:8], "little")
    return 2 <= header_len <= len(data) - 8 and data[8:9] == b"{"


def _check_zip(data: bytes) -> None:
    """Refuse zip bombs before torch reads the archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"corrupt checkpoint archive: {e}") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise CheckpointError(f"checkpoint archive has {len(infos)} entries (limit {MAX_ZIP_ENTRIES})")
    total = sum(i.file_size for i in infos)
    if total > MAX_UNCOMPRESSED_BYTES or total > MAX_EXPANSION_RATIO * max(len(data), 1) + 2**20:
        raise CheckpointError(
            f"checkpoint archive expands to {total} bytes from {len(data)} (expansion limit exceeded)"
        )


def _torch_load(data: bytes) -> object:
    if data[:4] == b"PK\x03\x04":
        _check_zip(data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported global" in ln or "GLOBAL" in ln), "")
        detail = f" ({detail.strip()[:160]})" if detail else ""
        raise UnsafeCheckpointError(
            f"the checkpoint pickles objects other than tensors{detail}; it may be a whole model "
            f"or contain code, which is never unpickled: {_HOW_TO_SAVE}"
        ) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError on garbage
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"not a readable PyTorch or safetensors checkpoint: {msg[:200]}") from None


def _unwrap(obj: object) -> StateDict:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"the checkpoint holds a {type(obj).__name__}, not a state_dict; {_HOW_TO_SAVE}"
        )
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"the checkpoint's entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor; {_HOW_TO_SAVE}"
        )
    keys = list(obj)
    if all(str(k).startswith("module.") for k in keys):
        return {str(k)[len("module.") :]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}


def check_finite(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise on the first floating tensor holding NaN or Inf."""
    for key, t in state_dict.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"tensor {key!r} holds NaN or Inf values")


def load_state_dict_bytes(data: bytes) -> StateDict:
    """Parse checkpoint bytes into a flat state_dict of CPU tensors (see module docstring)."""
    if _is_safetensors(data):
        try:
            sd = load_safetensors_bytes(data)
        except Exception as e:
            raise CheckpointError(f"corrupt safetensors file: {str(e)[:200]}") from None
    else:
        sd = _unwrap(_torch_load(data))
    check_finite(sd)
    return sd


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a checkpoint file safely; see `load_state_dict_bytes`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return load_state_dict_bytes(p.read_bytes())
