import numpy as np
import pytest
import torch

from nern.permute import (
    bits_for,
    greedy_path,
    infilter_orders,
    infilter_path,
    pack_indices,
    permute_layer,
    permute_network,
    smoothness,
    unpack_indices,
)


def naive_greedy(kernels: np.ndarray, start: int = 0) -> np.ndarray:
    """The plain definition: start at `start`, repeatedly take the most similar unvisited (cosine
    similarity to every kernel, recomputed at each step; two zero kernels count as similarity 1,
    a zero and a non-zero one as 0; ties go to the lowest index)."""
    x = kernels.reshape(len(kernels), -1).astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    zero = norms == 0
    n = len(x)
    visited = np.zeros(n, bool)
    order = [start]
    visited[start] = True
    cur = start
    for _ in range(n - 1):
        if zero[cur]:
            sims = zero.astype(np.float64)
        else:
            sims = np.divide(x @ x[cur], norms * norms[cur], out=np.zeros(n), where=~zero)
        sims[visited] = -np.inf
        cur = int(np.argmax(sims))
        visited[cur] = True
        order.append(cur)
    return np.array(order)


@pytest.mark.parametrize("n,d", [(40, 9), (300, 9), (500, 49), (2600, 9)])
def test_crossfilter_matches_the_naive_greedy(n, d):
    k = np.random.default_rng(n).standard_normal((n, d))
    assert np.array_equal(greedy_path(k), naive_greedy(k))


def test_scalar_kernels_with_zeros_match_the_naive_greedy():
    k = np.random.default_rng(1).standard_normal((300, 1))
    k[::5] = 0.0
    assert np.array_equal(greedy_path(k), naive_greedy(k))
    k = np.random.default_rng(2).standard_normal((3000, 1))  # above the dense limit
    assert np.array_equal(greedy_path(k), naive_greedy(k))


def test_infilter_matches_the_naive_definition():
    w = np.random.default_rng(3).standard_normal((12, 10, 3, 3))
    fo, co = infilter_orders(w)
    for f in range(12):
        assert np.array_equal(co[f], naive_greedy(w[f].reshape(10, 9)))
    reordered = np.stack([w[f].reshape(10, 9)[co[f]] for f in range(12)])
    unit = reordered / np.linalg.norm(reordered, axis=2, keepdims=True)
    sim = np.einsum("acd,bcd->ab", unit, unit)
    # naive filter walk on the summed similarity
    visited, order, cur = {0}, [0], 0
    for _ in range(11):
        cand = [(sim[cur, b], -b) for b in range(12) if b not in visited]
        cur = -max(cand)[1]
        visited.add(cur)
        order.append(cur)
    assert fo.tolist() == order
    path = infilter_path(fo, co)
    assert sorted(path.tolist()) == list(range(120))
    assert path[0] == 0 * 10 + co[0][0]


def test_blocked_path_is_a_permutation_and_smooth():
    w = torch.randn(256, 192, 3, 3)  # 49,152 kernels: above the exact limit
    p = permute_layer(w, "crossfilter").path()
    assert np.array_equal(np.sort(p), np.arange(256 * 192))
    assert p[0] == 0
    assert smoothness(w, p) > 0.5 > abs(smoothness(w))


@pytest.mark.parametrize("kind", ["crossfilter", "infilter"])
def test_permuting_and_unpermuting_returns_every_tensor_bit_for_bit(kind):
    from nern.reconstruct import KernelLayout, find_modeled_layers
    from nern.targets import create_target

    torch.manual_seed(0)
    model = create_target("resnet20b")
    layers = find_modeled_layers(model)
    weights = {ly.name: model.get_parameter(ly.name).detach() for ly in layers}
    perms = permute_network(weights, kind)
    layout = KernelLayout(layers, [perms[ly.name].path() for ly in layers])
    back = layout.to_weights(layout.from_weights(weights))
    for name, w in weights.items():
        assert torch.equal(back[name], w)
    # and the permutation really moved kernels
    assert any(not np.array_equal(perms[n].path(), np.arange(len(perms[n].path()))) for n in perms)


def test_bit_packing_round_trip_and_size():
    rng = np.random.default_rng(0)
    for n in (2, 3, 16, 17, 4096, 262144):
        v = rng.permutation(n)
        data = pack_indices(v, n)
        assert len(data) == -(-n * bits_for(n) // 8)
        assert np.array_equal(unpack_indices(data, n, n), v)
    assert bits_for(4096) == 12 and bits_for(4097) == 13


def test_permutations_are_cached_by_checkpoint_hash(cache_dir, monkeypatch):
    w = {"a.weight": torch.randn(8, 8, 3, 3), "b.weight": torch.randn(4, 8, 3, 3)}
    first = permute_network(w, "crossfilter", "abc123")
    assert (cache_dir / "permutations" / "abc123-crossfilter.npz").is_file()
    import nern.permute as permute_mod

    def boom(*_a, **_k):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(permute_mod, "permute_layer", boom)
    second = permute_network(w, "crossfilter", "abc123")
    for name in w:
        assert np.array_equal(first[name].path(), second[name].path())
