"""The predictor package: one self-describing safetensors file.

Tensors: the predictor's parameters (`predictor.*`), the per-layer output scales
(`layer_scale`) and the bit-packed permutation indices (`perm.<layer>.<array>`, uint8).
The safetensors header's metadata key `nern` holds JSON: format version, library version,
target (arch + kwargs), predictor and embedding config, modeled layers, permutation layout,
sha256 of the source checkpoint, the unmodeled tensors (copied from the original checkpoint
at reconstruction: names and bytes) and the training summary.

Compressed predictors (format version 2, written by `nern.compress`): `meta["predictor"]
["encoding"]` lists, per predictor parameter, its shape, storage dtype and whether it is sparse:
  - "fp32" / "fp16": `predictor.<name>` in that dtype;
  - "int8": `predictor.<name>.q` (int8) and `predictor.<name>.scale` (float32, one per output
    row: value = q · scale, symmetric per-channel quantisation);
  - sparse: the stored values' non-zeros only (`predictor.<name>` or `.q` holds them in
    row-major order) and `predictor.<name>.mask`, the non-zero bitmask packed 8 per byte
    (little-endian bit order).
`Package.predictor()` always decodes to a float32 `KernelPredictor`. Packages without an
encoding are version 1 and are written exactly as before.

`reconstruct(package, original_state_dict)` regenerates every modeled kernel and returns a
state_dict the original architecture loads with strict=True.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from . import __version__
from .config import FitConfig
from .errors import NernError, PackageError
from .io import atomic_write_bytes
from .model import NernModel
from .permute import LayerPermutation, index_range, pack_indices, unpack_indices
from .predictor import KernelPredictor
from .reconstruct import KernelLayout, ModeledLayer
from .targets import TargetNetwork, image_size_of, load_target

FORMAT = "nern-package"
FORMAT_VERSION = 1  # plain float predictor (what `build_package` writes)
ENCODED_FORMAT_VERSION = 2  # predictor stored with an encoding (quantised and/or sparse)
PREDICTOR_DTYPES = ("fp32", "fp16", "int8")


@dataclass
class Package:
    meta: dict
    tensors: dict[str, torch.Tensor]

    # ---- derived views ---------------------------------------------------------------------
    def layers(self) -> list[ModeledLayer]:
        return [ModeledLayer(d["name"], tuple(d["shape"])) for d in self.meta["layers"]]

    def permutations(self) -> dict[str, LayerPermutation] | None:
        perm = self.meta.get("permutation")
        if not perm:
            return None
        out = {}
        for layer, arrays in perm["arrays"].items():
            out[layer] = LayerPermutation(
                perm["kind"],
                {
                    name: unpack_indices(
                        self.tensors[f"perm.{layer}.{name}"].numpy().tobytes(), spec["n"], int(np.prod(spec["shape"]))
                    ).reshape(spec["shape"])
                    for name, spec in arrays.items()
                },
            )
        return out

    def layout(self) -> KernelLayout:
        perms = self.permutations()
        layers = self.layers()
        return KernelLayout(layers, None if perms is None else [perms[ly.name].path() for ly in layers])

    def model(self) -> NernModel:
        """The NeRN model this package stores (float32 predictor, eval mode, on the CPU)."""
        emb = self.meta["embedding"]
        return NernModel(self.predictor(), self.layout(), self.tensors["layer_scale"], emb["levels"],
                         emb["base"], self.permutations()).eval()

    @property
    def arch(self) -> str:
        return self.meta["target"]["arch"]

    @property
    def image_size(self) -> int:
        """The input size the package's network takes (its fit's image_size, else the arch's)."""
        return (self.meta.get("config") or {}).get("image_size") or image_size_of(self.arch)

    def original_network(self, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
        """The package's architecture holding `state_dict` (strict), in eval mode: the one way to
        rebuild the original network; PackageError when the weights do not fit the package."""
        target = self.meta["target"]
        try:
            model, _, _ = load_target(dict(state_dict), target["arch"], **target["kwargs"])
        except NernError as e:
            raise PackageError(f"the checkpoint does not belong to this package: {e}") from None
        for name, shape in ((d["name"], tuple(d["shape"])) for d in self.meta["layers"]):
            if name not in state_dict or tuple(state_dict[name].shape) != shape:
                raise PackageError(f"the checkpoint's {name!r} does not match the package's layer")
        return model.eval()

    def predictor(self) -> KernelPredictor:
        p = self.meta["predictor"]
        model = KernelPredictor(p["in_dim"], p["hidden"], p["layers"], p["kernel_size"])
        if p.get("encoding"):
            state = decode_predictor_state(self.tensors, p["encoding"])
        else:
            state = {k[len("predictor."):]: v.float() for k, v in self.tensors.items() if k.startswith("predictor.")}
        model.load_state_dict(state, strict=True)
        return model.eval()

    def size_report(self) -> dict:
        """Bytes of everything the package stores, and of what it borrows from the original."""
        pred = sum(t.numel() * t.element_size() for k, t in self.tensors.items() if k.startswith("predictor."))
        perm = sum(t.numel() for k, t in self.tensors.items() if k.startswith("perm."))
        other = sum(
            t.numel() * t.element_size()
            for k, t in self.tensors.items()
            if not k.startswith(("predictor.", "perm."))
        )
        package_bytes = len(self.to_bytes())
        return {
            "predictor_bytes": pred,
            "permutation_bytes": perm,
            "other_tensor_bytes": other,
            # safetensors header: tensor index + JSON metadata (needed to read the package)
            "header_bytes": package_bytes - pred - perm - other,
            "package_bytes": package_bytes,
            "modeled_fp32_bytes": 4 * sum(int(np.prod(d["shape"])) for d in self.meta["layers"]),
            "unmodeled_bytes": self.meta["unmodeled"]["bytes"],
        }

    def to_bytes(self) -> bytes:
        return st_save(self.tensors, metadata={"nern": json.dumps(self.meta, sort_keys=True)})


def build_package(model: NernModel, target: TargetNetwork, config: FitConfig, *,
                  source_sha256: str | None, summary: dict) -> Package:
    """The package of a NeRN model fitted to `target` with `config` (the model's current
    predictor parameters: apply a parameter average first to package it)."""
    # cloned: the parameters may be a parameter average swapped in only for this call
    tensors = {f"predictor.{k}": v.detach().cpu().clone() for k, v in model.predictor.state_dict().items()}
    tensors["layer_scale"] = model.layer_scale.detach().cpu().float()
    perm_meta = None
    if model.permutations is not None:
        arrays_meta: dict[str, dict] = {}
        for name, perm in model.permutations.items():
            arrays_meta[name] = {}
            for aname, arr in perm.arrays.items():
                n = index_range(aname, arr)
                packed = pack_indices(arr, n)
                tensors[f"perm.{name}.{aname}"] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
                arrays_meta[name][aname] = {"n": n, "shape": list(arr.shape)}
        perm_meta = {"kind": next(iter(model.permutations.values())).kind, "arrays": arrays_meta}
    unmodeled = target.unmodeled(set(model.layout.names))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "target": {"arch": target.arch, "kwargs": target.kwargs},
        "predictor": {
            "in_dim": model.embedding.shape[1],
            "hidden": config.hidden,
            "layers": config.layers,
            "kernel_size": model.layout.k_max,
        },
        "embedding": {"levels": model.emb_levels, "base": model.emb_base},
        "layers": [{"name": ly.name, "shape": list(ly.shape)} for ly in model.layout.layers],
        "permutation": perm_meta,
        "source_sha256": source_sha256,
        "unmodeled": {
            "names": sorted(unmodeled),
            "bytes": sum(t.numel() * t.element_size() for t in unmodeled.values()),
        },
        "config": config.model_dump(mode="json"),
        "summary": summary,
    }
    return Package(meta=meta, tensors=tensors)


# ---- compressed predictor storage ---------------------------------------------------------

def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel (per output row) int8 quantisation: weight ≈ q · scale[:, None].

    scale = max|row| / 127 (1 for an all-zero row), q = round(weight / scale) in [−127, 127];
    so every element's error is at most scale / 2.
    """
    w = weight.detach().float().reshape(weight.shape[0], -1) if weight.dim() > 1 else weight.detach().float()[:, None]
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)


_TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}


def encode_predictor_state(
    state: dict[str, torch.Tensor], dtype: str = "fp32", sparse: bool | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Predictor parameters → (package tensors `predictor.*`, meta["predictor"]["encoding"]).

    dtype applies to the weight matrices; 1-D parameters (biases) are stored as fp32 when
    dtype is "fp32" and as fp16 otherwise. sparse=None stores a tensor sparsely (non-zero
    values + bitmask) when that is smaller, True always, False never. Lossless given dtype:
    decoding returns exactly the (quantised) values, zeros included.
    """
    if dtype not in PREDICTOR_DTYPES:
        raise PackageError(f"unknown predictor dtype {dtype!r} (use {', '.join(PREDICTOR_DTYPES)})")
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for name, t in state.items():
        t = t.detach().cpu().float()
        kind = dtype if t.dim() >= 2 else ("fp32" if dtype == "fp32" else "fp16")
        key = f"predictor.{name}"
        if kind == "int8":
            stored, scale = quantize_int8(t)
            tensors[f"{key}.scale"] = scale.contiguous()
            key = f"{key}.q"
        else:
            stored = t.to(_TORCH_DTYPE[kind])
        nz = (stored != 0).reshape(-1)
        nnz, numel, item = int(nz.sum()), stored.numel(), stored.element_size()
        use_sparse = sparse if sparse is not None else nnz * item + (numel + 7) // 8 < numel * item
        if use_sparse:
            tensors[key] = stored.reshape(-1)[nz].contiguous()
            bits = np.packbits(nz.numpy(), bitorder="little")
            tensors[f"predictor.{name}.mask"] = torch.from_numpy(bits.copy())
        else:
            tensors[key] = stored.contiguous()
        entries[name] = {"shape": list(t.shape), "dtype": kind, "sparse": bool(use_sparse)}
    return tensors, {"dtype": dtype, "tensors": entries}


def decode_predictor_state(tensors: dict[str, torch.Tensor], encoding: dict) -> dict[str, torch.Tensor]:
    """Inverse of `encode_predictor_state`: float32 parameters of the predictor."""
    out: dict[str, torch.Tensor] = {}
    try:
        for name, e in encoding["tensors"].items():
            shape, kind, key = tuple(e["shape"]), e["dtype"], f"predictor.{name}"
            stored_key = f"{key}.q" if kind == "int8" else key
            stored = tensors[stored_key]
            if stored.dtype != _TORCH_DTYPE[kind]:
                raise PackageError(f"{stored_key} is {stored.dtype}, the encoding says {kind}")
            numel = int(np.prod(shape))
            if e["sparse"]:
                bits = np.unpackbits(tensors[f"{key}.mask"].numpy(), bitorder="little")[:numel]
                nz = torch.from_numpy(bits.astype(bool))
                if int(nz.sum()) != stored.numel():
                    raise PackageError(f"{key}: the bitmask has {int(nz.sum())} bits set for {stored.numel()} values")
                dense = torch.zeros(numel, dtype=stored.dtype)
                dense[nz] = stored
                stored = dense
            stored = stored.reshape(shape)
            out[name] = dequantize_int8(stored, tensors[f"{key}.scale"]) if kind == "int8" else stored.float()
    except KeyError as e:
        raise PackageError(f"corrupt compressed predictor: missing tensor {e}") from None
    return out


def save_package(package: Package, path: str | os.PathLike) -> int:
    """Write atomically; returns the file's size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, package.to_bytes())


def load_package_bytes(data: bytes) -> Package:
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["nern"])
    except Exception as e:
        raise PackageError(f"not a NeRN package: {str(e)[:160]}") from None
    if meta.get("format") != FORMAT:
        raise PackageError("not a NeRN package (missing format marker)")
    if meta.get("format_version", 0) > ENCODED_FORMAT_VERSION:
        raise PackageError(
            f"package format {meta['format_version']} is newer than this library reads "
            f"({ENCODED_FORMAT_VERSION}); upgrade nern"
        )
    return Package(meta=meta, tensors=tensors)


def load_package(path: str | os.PathLike) -> Package:
    p = Path(path)
    if not p.is_file():
        raise PackageError(f"package not found: {p}")
    return load_package_bytes(p.read_bytes())


def predict_weights(package: Package) -> dict[str, torch.Tensor]:
    """Regenerate every modeled kernel of the package, in the original layout."""
    return package.model().weights()


def reconstruct(package: Package, original_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original state_dict with every modeled kernel replaced by the predictor's."""
    package.original_network(original_state_dict)  # refuses weights that are not the package's
    out = {k: v.clone() for k, v in original_state_dict.items()}
    for name, w in predict_weights(package).items():
        out[name] = w.to(out[name].dtype).contiguous()
    return out
