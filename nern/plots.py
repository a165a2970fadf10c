"""PNG figures for importance maps, pruning curves and compression sweeps.

Drawn with matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, so
importing this module never touches a display or another caller's figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    fig.savefig(path, dpi=110, format="png")
    return path


def importance_heatmap(kernel_error: torch.Tensor, path: str | os.PathLike, title: str) -> Path:
    """Heatmap of one layer's mean relative error per kernel: filters (rows) × channels."""
    e = kernel_error.detach().double().cpu().numpy()
    pos = e[e > 0]
    lo = float(pos.min()) if pos.size else 1e-6
    hi = max(float(e.max()), lo * 10)
    c_out, c_in = e.shape
    fig = Figure(figsize=(min(12.0, 4.5 + c_in * 0.09), min(12.0, 2.0 + c_out * 0.09)))
    ax = fig.add_subplot()
    im = ax.imshow(np.clip(e, lo, None), norm=LogNorm(vmin=lo, vmax=hi), cmap="magma",
                   aspect="auto", interpolation="nearest")
    ax.set_xlabel("input channel")
    ax.set_ylabel("output filter")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean |W−Ŵ|/|W| per kernel")
    fig.tight_layout()
    return _save(fig, path)


def pruning_curve_figure(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Top-1 versus pruned fraction, one line per method."""
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    x = [100 * r["fraction"] for r in rows]
    for method in [k for k in rows[0] if k != "fraction"]:
        ax.plot(x, [r[method] for r in rows], marker="o", label=method)
    ax.set_xlabel("modeled conv weights zeroed (%)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title or "pruning the original by importance, magnitude, random", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def sweep_figure(sweep: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Top-1 versus bytes (log scale): NeRN per dtype over the prune fractions, and baselines."""
    fig = Figure(figsize=(7.0, 4.6))
    ax = fig.add_subplot()
    rows = sweep["rows"]
    nern = [r for r in rows if r["method"] == "nern"]
    for dtype in dict.fromkeys(r["dtype"] for r in nern):
        pts = sorted((r["bytes"], r["top1"]) for r in nern if r["dtype"] == dtype)
        ax.plot(*zip(*pts), marker="o", label=f"NeRN {dtype}")
    markers = {"original": "s", "magnitude-pruned": "^"}
    for method in ("original", "magnitude-pruned"):
        for kind in ("fp32", "fp16", "int8"):
            pts = sorted((r["bytes"], r["top1"]) for r in rows
                         if r["method"] == method and r["setting"].startswith(kind))
            if pts:
                ax.plot(*zip(*pts), marker=markers[method], linestyle=":" if len(pts) > 1 else "none",
                        label=f"{method} {kind}")
    ax.set_xscale("log")
    ax.set_xlabel(f"bytes (unmodeled tensors excluded: {sweep['unmodeled_bytes']:,})")
    ax.set_ylabel(f"top-1 (%) on {sweep['eval_images']} images")
    ax.set_title(title or "accuracy versus bytes", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["importance_heatmap", "pruning_curve_figure", "sweep_figure"]
