"""Permutation smoothing (NERN.md §4): reorder which coordinate each kernel gets.

A layer's permutation is a *path*: `path[i]` is the flat index (f·C_in + c) of the original
kernel that sits at coordinate position i (coordinate (i // C_in, i % C_in)). Weights are never
changed, only their coordinates, so the reconstructed network is written back in the original
order.

- crossfilter: all C_out·C_in kernels of a layer form one greedy nearest-neighbour path under
  cosine similarity (start at kernel 0, repeatedly take the most similar unvisited kernel).
- infilter: channels are ordered greedily within each filter, then the filters are ordered
  greedily by the summed similarity of their reordered kernels.

Speed: cosine similarity on unit vectors is a monotone function of Euclidean distance, so the
exact greedy step is "nearest unvisited point". Every kernel's K nearest neighbours come from a
KD-tree in one vectorised query; the walk (compiled with numba) takes the first unvisited entry
of the current kernel's sorted list — exactly the greedy choice — and only when all K are used
scans the still-unvisited kernels (a compacted list, so memory stays O(N·K), never N×N).
Ties are broken towards the lowest index, as the plain definition's argmax does.

Layers above EXACT_LIMIT kernels (only ImageNet-size layers: 256×256 and up) use a blocked
greedy instead, since an exact nearest-neighbour query in 9-D costs ~100 µs and a 512×512 layer
needs 262,144 of them: the kernels are clustered (spherical k-means, ~1,024 per cell), the cells
are ordered by a greedy path over their centroids, and each cell is walked with the exact greedy
rule, starting from the kernel most similar to the previous cell's last one. The result is a
greedy path whose moves are restricted to a cell; `benchmarks/permute_speed.py` reports its
smoothness next to the exact path's on a 256×256 layer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import torch
from scipy.spatial import cKDTree

from .io import atomic_write

NEIGHBOURS = 24
DENSE_LIMIT = 2048  # up to this many kernels: exact greedy on the full similarity matrix
EXACT_LIMIT = 40_000  # up to this many: exact greedy with K-nearest-neighbour lists
CELL_SIZE = 1024  # blocked greedy: mean kernels per cell


def _unit_rows(kernels: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; zero rows become a unit vector orthogonal to every kernel
    (an extra coordinate), so their cosine similarity with any non-zero kernel is 0."""
    x = kernels.reshape(kernels.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    out = np.zeros((x.shape[0], x.shape[1] + 1))
    out[~zero, :-1] = x[~zero] / norms[~zero, None]
    out[zero, -1] = 1.0
    return out


@numba.njit(cache=True)
def _greedy_walk(x, nbrs, start):  # pragma: no cover - compiled
    n = x.shape[0]
    d = x.shape[1]
    visited = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    pool = np.arange(n)  # unvisited candidates, compacted lazily
    pool_len = n
    cur = start
    visited[cur] = True
    order[0] = cur
    for i in range(1, n):
        nxt = -1
        row = nbrs[cur]
        for j in range(row.shape[0]):
            c = row[j]
            if c >= 0 and not visited[c]:
                nxt = c
                break
        if nxt < 0:
            best = -np.inf
            w = 0
            for r in range(pool_len):
                c = pool[r]
                if visited[c]:
                    continue
                pool[w] = c
                w += 1
                s = 0.0
                for t in range(d):
                    s += x[cur, t] * x[c, t]
                if s > best or (s == best and c < nxt):
                    best = s
                    nxt = c
            pool_len = w
        visited[nxt] = True
        order[i] = nxt
        cur = nxt
    return order


@numba.njit(cache=True)
def _greedy_walk_dense(sim, start):  # pragma: no cover - compiled
    """Greedy path on a small precomputed similarity matrix (argmax: lowest index on ties)."""
    n = sim.shape[0]
    visited = np.zeros(n, dtype=np.bool_)
    order = np.empty(n, dtype=np.int64)
    cur = start
    visited[cur] = True
    order[0] = cur
    for i in range(1, n):
        best = -np.inf
        nxt = -1
        for c in range(n):
            if not visited[c] and sim[cur, c] > best:
                best = sim[cur, c]
                nxt = c
        visited[nxt] = True
        order[i] = nxt
        cur = nxt
    return order


def _sorted_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest other rows (Euclidean on unit vectors = descending cosine).

    Equal distances are ordered by index so the walk's choice matches argmax's tie-breaking.
    """
    n = x.shape[0]
    k = min(k, n - 1)
    dist, idx = cKDTree(x).query(x, k=k + 1, workers=-1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    # Ties: cKDTree's order among equal distances is arbitrary; sort by (distance, index).
    order = np.lexsort((idx, np.round(dist, 12)), axis=1)
    return np.take_along_axis(idx, order, axis=1).astype(np.int64)


def greedy_path(kernels: np.ndarray, start: int = 0, neighbours: int = NEIGHBOURS,
                exact_limit: int = EXACT_LIMIT) -> np.ndarray:
    """Greedy nearest-neighbour ordering of kernels [N, ...] under cosine similarity
    (exact up to `exact_limit` kernels, blocked above: see the module docstring)."""
    n = kernels.shape[0]
    flat = kernels.reshape(n, -1)
    if flat.shape[1] == 1:
        return _scalar_path(flat[:, 0], start)
    x = _unit_rows(flat)
    if n <= DENSE_LIMIT:
        return _greedy_walk_dense(x @ x.T, start)
    if n <= exact_limit:
        return _greedy_walk(x, _sorted_neighbours(x, neighbours), start)
    return _blocked_path(x, start)


def _scalar_path(values: np.ndarray, start: int) -> np.ndarray:
    """Exact greedy path for 1×1 kernels, in closed form: cosine similarity of scalars is the
    product of their signs (zero kernels are similar only to each other), so from `start` the
    path takes the rest of its sign class in index order, then the class most similar to its
    last element (zeros after a non-zero: similarity 0 beats −1), and so on, lowest index first."""
    sign = np.sign(values).astype(np.int64)
    classes = {c: np.flatnonzero(sign == c) for c in (-1, 0, 1)}
    order = [np.array([start])]
    cur = int(sign[start])
    remaining = {c: idx[idx != start] for c, idx in classes.items()}
    order.append(remaining.pop(cur))
    while remaining:
        # similarity of the current class to each remaining one; ties → the lowest index.
        def key(c: int, cur: int = cur) -> tuple[float, int]:
            sim = 1.0 if c == cur else (0.0 if 0 in (c, cur) else -1.0)
            first = remaining[c][0] if len(remaining[c]) else np.iinfo(np.int64).max
            return (-sim, first)

        nxt = min(remaining, key=key)
        order.append(remaining.pop(nxt))
        cur = nxt
    return np.concatenate(order).astype(np.int64)


def _spherical_kmeans(x: np.ndarray, cells: int, iters: int = 4, seed: int = 0) -> np.ndarray:
    """Cell index of every row (unit vectors), by a few Lloyd steps of spherical k-means."""
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(x.astype(np.float32))
    cent = xt[torch.from_numpy(rng.choice(len(x), cells, replace=False))]
    assign = torch.empty(len(x), dtype=torch.long)
    for _ in range(iters + 1):
        for s in range(0, len(x), 65536):
            assign[s : s + 65536] = (xt[s : s + 65536] @ cent.T).argmax(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, xt)
        empty = sums.norm(dim=1) == 0
        sums[empty] = cent[empty]
        cent = torch.nn.functional.normalize(sums, dim=1)
    return assign.numpy()


def _blocked_path(x: np.ndarray, start: int) -> np.ndarray:
    n = x.shape[0]
    cells = max(2, n // CELL_SIZE)
    assign = _spherical_kmeans(x, cells)
    members = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[members], np.arange(cells + 1))
    groups = [members[bounds[c] : bounds[c + 1]] for c in range(cells)]
    groups = [g for g in groups if len(g)]
    cent = np.stack([x[g].mean(0) for g in groups])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True).clip(1e-12)
    first = next(i for i, g in enumerate(groups) if start in g)
    cell_order = _greedy_walk_dense(cent @ cent.T, first)
    out, prev = [], None
    for c in cell_order:
        g = groups[c]
        local_start = int(np.flatnonzero(g == start)[0]) if prev is None else int(np.argmax(x[g] @ x[prev]))
        sub = x[g]
        if len(g) <= DENSE_LIMIT:
            local = _greedy_walk_dense(sub @ sub.T, local_start)
        else:
            local = _greedy_walk(sub, _sorted_neighbours(sub, NEIGHBOURS), local_start)
        path = g[local]
        out.append(path)
        prev = path[-1]
    return np.concatenate(out).astype(np.int64)


def crossfilter_path(weight: np.ndarray) -> np.ndarray:
    c_out, c_in = weight.shape[:2]
    return greedy_path(weight.reshape(c_out * c_in, -1))


def infilter_orders(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(filter_order [C_out], channel_orders [C_out, C_in]) of the infilter permutation."""
    c_out, c_in = weight.shape[:2]
    w = weight.reshape(c_out, c_in, -1)
    channel_orders = np.stack([greedy_path(w[f]) for f in range(c_out)])
    reordered = np.take_along_axis(w, channel_orders[:, :, None], axis=1)
    unit = _unit_rows(reordered.reshape(c_out * c_in, -1)).reshape(c_out, -1)
    filter_order = _greedy_walk_dense(unit @ unit.T, 0)
    return filter_order, channel_orders


def infilter_path(filter_order: np.ndarray, channel_orders: np.ndarray) -> np.ndarray:
    c_in = channel_orders.shape[1]
    return (filter_order[:, None] * c_in + channel_orders[filter_order]).reshape(-1)


@dataclass
class LayerPermutation:
    """How one layer's kernels map to coordinates; `path()` gives the flat form."""

    kind: str  # "crossfilter" | "infilter"
    arrays: dict[str, np.ndarray]

    def path(self) -> np.ndarray:
        if self.kind == "crossfilter":
            return self.arrays["path"]
        return infilter_path(self.arrays["filter_order"], self.arrays["channel_orders"])


def index_range(name: str, array: np.ndarray) -> int:
    """The number of distinct values an index array may take (its n in ⌈log2 n⌉)."""
    if name == "channel_orders":
        return array.shape[1]
    return array.size


def bits_for(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def permute_layer(weight: torch.Tensor | np.ndarray, kind: str) -> LayerPermutation:
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    if kind == "crossfilter":
        return LayerPermutation("crossfilter", {"path": crossfilter_path(w)})
    if kind == "infilter":
        fo, co = infilter_orders(w)
        return LayerPermutation("infilter", {"filter_order": fo, "channel_orders": co})
    raise ValueError(f"unknown permutation {kind!r}; use none, infilter or crossfilter")


def smoothness(weight: torch.Tensor, path: np.ndarray | None = None) -> float:
    """Mean cosine similarity of coordinate-adjacent kernels (along c and along f) of a layer,
    laid out by `path` (None = the original order)."""
    c_out, c_in = weight.shape[:2]
    k = weight.detach().reshape(c_out * c_in, -1).double()
    if path is not None:
        k = k[torch.as_tensor(path)]
    u = torch.nn.functional.normalize(k, dim=1).reshape(c_out, c_in, -1)
    sims = []
    if c_in > 1:
        sims.append((u[:, 1:] * u[:, :-1]).sum(-1).reshape(-1))
    if c_out > 1:
        sims.append((u[1:] * u[:-1]).sum(-1).reshape(-1))
    return float(torch.cat(sims).mean()) if sims else 1.0


# ---- bit packing -------------------------------------------------------------------------

def pack_indices(values: np.ndarray, n: int) -> bytes:
    """Pack non-negative ints < n at ⌈log2 n⌉ bits each (little-endian bit order)."""
    b = bits_for(n)
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    bits = ((v[:, None] >> np.arange(b, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little").tobytes()


def unpack_indices(data: bytes, n: int, count: int) -> np.ndarray:
    b = bits_for(n)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: count * b]
    weights = np.uint64(1) << np.arange(b, dtype=np.uint64)
    return (bits.reshape(count, b).astype(np.uint64) * weights).sum(axis=1).astype(np.int64)


# ---- per-network permutations, cached by checkpoint ----------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("NERN_CACHE_DIR", Path.home() / ".cache" / "nern")) / "permutations"


def permute_network(
    weights: dict[str, torch.Tensor], kind: str, source_sha256: str | None = None
) -> dict[str, LayerPermutation]:
    """Permutations for every given layer; cached on disk under the checkpoint's sha256."""
    cache = cache_dir() / f"{source_sha256}-{kind}.npz" if source_sha256 else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                out: dict[str, LayerPermutation] = {}
                for name in weights:
                    keys = [k for k in z.files if k.startswith(name + "|")]
                    out[name] = LayerPermutation(kind, {k.split("|", 1)[1]: z[k] for k in keys})
                if all(p.arrays for p in out.values()):
                    return out
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite
    out = {name: permute_layer(w, kind) for name, w in weights.items()}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{n}|{k}": a for n, p in out.items() for k, a in p.arrays.items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
                np.savez(f, **arrays)

        atomic_write(cache, write)
    return out
