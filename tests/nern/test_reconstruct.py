import numpy as np
import pytest
import torch
from torch import nn

from nern.errors import TargetError
from nern.reconstruct import KernelLayout, centre_crop_index, find_modeled_layers, run_with_weights


def test_centre_crop_rules():
    # 7x7 grid numbered row-major; the 3x3 centre starts at (2, 2), the 1x1 is the middle.
    assert centre_crop_index(7, 1).tolist() == [24]
    assert centre_crop_index(7, 3).tolist() == [16, 17, 18, 23, 24, 25, 30, 31, 32]
    assert centre_crop_index(3, 3).tolist() == list(range(9))
    assert centre_crop_index(5, 3).tolist() == [6, 7, 8, 11, 12, 13, 16, 17, 18]


class Mixed(nn.Module):
    """A 7x7 stem, a 3x3 conv and a 1x1 conv: every crop path."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 7, padding=3, bias=False)
        self.body = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(5, 2, 1, bias=False)

    def forward(self, x):
        return self.proj(self.body(self.stem(x)))


def test_layout_round_trip_with_permutations_is_bit_exact():
    torch.manual_seed(0)
    net = Mixed()
    layers = find_modeled_layers(net)
    assert [ly.kernel_size for ly in layers] == [7, 3, 1]
    rng = np.random.default_rng(0)
    paths = [rng.permutation(ly.num_kernels) for ly in layers]
    layout = KernelLayout(layers, paths)
    weights = {ly.name: net.get_parameter(ly.name).detach() for ly in layers}
    rows = layout.from_weights(weights)
    assert rows.shape == (12 + 20 + 10, 49)
    back = layout.to_weights(rows)
    for name, w in weights.items():
        assert torch.equal(back[name], w), name
    # Row i of a layer holds the kernel path[i] of the original: check one by hand.
    li = 1
    i = 7
    q = paths[li][i]
    row = rows[layout.offsets[li] + i].reshape(7, 7)[2:5, 2:5]
    assert torch.equal(row, weights["body.weight"].reshape(-1, 3, 3)[q])
    # Padding outside the crops is never part of the valid mask.
    mask = layout.valid_mask()
    assert mask[:12].all() and mask[12:32].sum() == 20 * 9 and mask[32:].sum() == 10


def test_run_with_weights_is_differentiable_and_equals_loading():
    torch.manual_seed(0)
    net = Mixed().eval()
    x = torch.randn(2, 3, 8, 8)
    new = {n: torch.randn_like(p, requires_grad=True) for n, p in net.named_parameters()}
    out = run_with_weights(net, new, x)
    out.sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in new.values())
    ref = Mixed().eval()
    ref.load_state_dict({k: v.detach() for k, v in new.items()})
    assert torch.allclose(out, ref(x), atol=1e-6)


def test_grouped_convolutions_are_refused():
    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(TargetError, match="grouped/depthwise"):
        find_modeled_layers(net)
