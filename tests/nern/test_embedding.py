import math

import torch

from nern.embedding import embed_coordinates


def test_matches_the_formula_by_hand():
    coords = torch.tensor([[0.25, 0.5, 0.0], [0.0, 0.125, 0.75]])
    levels, base = 3, 0.76
    emb = embed_coordinates(coords, levels, base)
    assert emb.shape == (2, 6 * levels)
    for n in range(2):
        expected = []
        for i in range(3):
            for k in range(levels):
                a = math.pi * coords[n, i].item() * base**k
                expected += [math.sin(a), math.cos(a)]
        assert torch.allclose(emb[n], torch.tensor(expected), atol=1e-6)


def test_smooth_base_makes_neighbours_close_and_large_base_does_not():
    coords = torch.tensor([[0.0, 10 / 64, 0.0], [0.0, 11 / 64, 0.0]])
    smooth = embed_coordinates(coords, 40, 0.76)
    sharp = embed_coordinates(coords, 40, 1.2)
    assert (smooth[0] - smooth[1]).norm() < 0.2 < (sharp[0] - sharp[1]).norm()
