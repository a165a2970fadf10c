"""Positional embedding of kernel coordinates (NERN.md §1).

For each normalised index p in (l/L, f/C_out, c/C_in) and level k = 0..K-1 the embedding holds
sin(π·p·b^k) and cos(π·p·b^k), interleaved; the three blocks are concatenated: dim = 3·2·K.
"""

from __future__ import annotations

import math

import torch


def embed_coordinates(coords: torch.Tensor, levels: int, base: float) -> torch.Tensor:
    """coords: [N, 3] normalised to [0, 1) → [N, 6·levels] float32."""
    freqs = math.pi * base ** torch.arange(levels, dtype=torch.float64)  # [K]
    angles = coords.to(torch.float64)[:, :, None] * freqs  # [N, 3, K]
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1)  # [N, 3, K, 2]: sin, cos interleaved
    return emb.reshape(coords.shape[0], -1).to(torch.float32)
