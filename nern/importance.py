"""Importance maps from a trained predictor (NERN.md §5), and the pruning test of them.

    maps = importance_maps(package, original_state_dict)
    maps.save("out/")                       # importance.safetensors + importance.json
    rows = pruning_curve(model, original_state_dict, maps, images, labels)

NeRN reconstructs best the weights that matter, so a weight's relative reconstruction error
e = |W − Ŵ| / |W| is a map of (un)importance. Zero weights are guarded: the denominator is
max(|W|, ZERO_GUARD · max|W_layer|), so every e is finite and equals |W − Ŵ| / |W| exactly for
all weights above that floor. Aggregates: the mean of e over each k×k kernel ([C_out, C_in])
and over each filter ([C_out]).

The pruning test zeroes, globally across the modeled layers, the fraction of the original's
weights with the largest e, next to magnitude pruning (smallest |W|) and random pruning at the
same fractions; if the map means anything, pruning by it keeps accuracy longer than random.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .compress import lowest_masks
from .config import DEFAULT_PRUNING_FRACTIONS as DEFAULT_FRACTIONS
from .config import PRUNING_METHODS
from .errors import ConfigError, PackageError
from .evaluate import top1
from .package import Package, predict_weights

ZERO_GUARD = 1e-6
INDEX_FILE = "importance.json"
TENSOR_FILE = "importance.safetensors"


def relative_error(original: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """|W − Ŵ| / max(|W|, ZERO_GUARD · max|W|), elementwise (see the module docstring)."""
    w = original.detach().double()
    a = w.abs()
    floor = max(float(a.max()) * ZERO_GUARD, 1e-30)
    return ((w - predicted.detach().double()).abs() / a.clamp_min(floor)).float()


@dataclass
class ImportanceMaps:
    """Per modeled layer: the per-weight error [C_out, C_in, k, k], its mean per kernel
    [C_out, C_in] and per filter [C_out]."""

    weight_error: dict[str, torch.Tensor]
    kernel_error: dict[str, torch.Tensor]
    filter_error: dict[str, torch.Tensor]

    @classmethod
    def from_errors(cls, weight_error: Mapping[str, torch.Tensor]) -> ImportanceMaps:
        return cls(
            dict(weight_error),
            {n: e.mean(dim=(2, 3)) for n, e in weight_error.items()},
            {n: e.mean(dim=(1, 2, 3)) for n, e in weight_error.items()},
        )

    @property
    def layers(self) -> list[str]:
        return list(self.weight_error)

    def summary(self) -> dict[str, dict]:
        out = {}
        for n, e in self.weight_error.items():
            flat = e.reshape(-1).double()
            out[n] = {"shape": list(e.shape), "mean": float(flat.mean()), "median": float(flat.median()),
                      "p90": float(torch.quantile(flat, 0.9)) if flat.numel() <= 2**24 else None}
        return out

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write importance.safetensors (`<layer>/weight_error`, `/kernel_error`, `/filter_error`)
        and importance.json (the index: formula, guard, layers with shapes and statistics)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for n in self.layers:
            tensors[f"{n}/weight_error"] = self.weight_error[n].contiguous()
            tensors[f"{n}/kernel_error"] = self.kernel_error[n].contiguous()
            tensors[f"{n}/filter_error"] = self.filter_error[n].contiguous()
        save_file(tensors, str(out / TENSOR_FILE))
        index = {
            "format": "nern-importance",
            "version": 1,
            "formula": "|W - W_hat| / max(|W|, zero_guard * max|W_layer|); kernel/filter = mean over the kernel/filter",
            "zero_guard": ZERO_GUARD,
            "tensors": TENSOR_FILE,
            "layers": self.summary(),
        }
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
        return [out / TENSOR_FILE, out / INDEX_FILE]

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> ImportanceMaps:
        out = Path(out_dir)
        try:
            index = json.loads((out / INDEX_FILE).read_text())
            tensors = load_file(str(out / index["tensors"]))
            return cls(*({n: tensors[f"{n}/{kind}"] for n in index["layers"]}
                         for kind in ("weight_error", "kernel_error", "filter_error")))
        except (OSError, KeyError, ValueError) as e:
            raise PackageError(f"{out}: not readable importance maps ({str(e)[:160]})") from None


def importance_maps(package: Package, original_state_dict: Mapping[str, torch.Tensor]) -> ImportanceMaps:
    """The relative reconstruction error of every modeled weight of the package's predictor."""
    errors = {}
    for name, w_hat in predict_weights(package).items():
        if name not in original_state_dict or tuple(original_state_dict[name].shape) != tuple(w_hat.shape):
            raise PackageError(f"the checkpoint's {name!r} does not match the package's layer")
        errors[name] = relative_error(original_state_dict[name], w_hat)
    return ImportanceMaps.from_errors(errors)


# ---- pruning the original -------------------------------------------------------------------------

def pruning_scores(method: str, weights: Mapping[str, torch.Tensor], maps: ImportanceMaps | None = None,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-weight scores; pruning removes the highest-scored weights first.

    importance: the relative reconstruction error; magnitude: −|W|; random: uniform noise."""
    if method == "importance":
        if maps is None:
            raise ConfigError("importance pruning needs the importance maps")
        return {n: maps.weight_error[n] for n in weights}
    if method == "magnitude":
        return {n: -w.detach().abs().float() for n, w in weights.items()}
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(w.shape, generator=gen) for n, w in weights.items()}
    raise ConfigError(f"unknown pruning method {method!r} (use {', '.join(PRUNING_METHODS)})")


def prune_by_scores(weights: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                    fraction: float) -> dict[str, torch.Tensor]:
    """Zero the `fraction` of all the weights (ranked globally) with the highest scores."""
    masks = lowest_masks({n: -scores[n].double() for n in weights}, fraction)
    return {n: w.detach().float() * masks[n] for n, w in weights.items()}


def pruning_curve(
    model: nn.Module,
    original_state_dict: Mapping[str, torch.Tensor],
    maps: ImportanceMaps,
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    methods: Sequence[str] = PRUNING_METHODS,
    seed: int = 0,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Top-1 of the original network with `fraction` of its modeled weights zeroed by each method.

    `model` holds the original weights. Rows: {"fraction", "<method>": top-1, ...}."""
    weights = {n: original_state_dict[n].float() for n in maps.layers}
    scores = {m: pruning_scores(m, weights, maps, seed) for m in methods}
    rows = []
    for fraction in fractions:
        row = {"fraction": float(fraction)}
        for m in methods:
            row[m] = top1(model, prune_by_scores(weights, scores[m], fraction), images_u8, labels)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def pruning_table(rows: Sequence[dict], eval_images: int) -> str:
    methods = [k for k in rows[0] if k != "fraction"] if rows else []
    lines = [f"Top-1 % on {eval_images} images after zeroing a fraction of the modeled conv weights "
             "(ranked globally across layers).", "",
             "| pruned | " + " | ".join(methods) + " |", "| ---: |" + " ---: |" * len(methods)]
    for r in rows:
        lines.append(f"| {r['fraction']:.0%} | " + " | ".join(f"{r[m]:.2f}" for m in methods) + " |")
    return "\n".join(lines)


__all__ = [
    "ImportanceMaps", "importance_maps", "prune_by_scores", "pruning_curve", "pruning_scores",
    "pruning_table", "relative_error",
]
