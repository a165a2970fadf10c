"""NernModel: the predictor with its coordinate table; packages are built from it and load back."""

from __future__ import annotations

import math

import pytest
import torch

from nern.config import FitConfig
from nern.model import NernModel
from nern.package import build_package, load_package_bytes
from nern.permute import permute_network
from nern.reconstruct import find_modeled_layers
from nern.targets import TargetNetwork


def test_model_rows_land_in_the_right_kernels_and_round_trip_through_a_package(resnet20_sd, cache_dir):
    target = TargetNetwork.load(resnet20_sd)
    layers = find_modeled_layers(target.module)
    weights = {ly.name: resnet20_sd[ly.name] for ly in layers}
    perms = permute_network(weights, "crossfilter", None)
    torch.manual_seed(0)
    model = NernModel.create(layers, perms, NernModel.scales_of(weights, layers), hidden=8, depth=3,
                             emb_levels=2, emb_base=1.2)
    # buffers: one embedded coordinate and one scale per kernel
    assert model.embedding.shape == (29744, 12) and model.row_scale.shape == (29744, 1)
    assert math.isclose(float(model.layer_scale[0]), float(resnet20_sd["conv1.weight"].std()), rel_tol=1e-6)

    out = model.weights()
    # Independently: the kernel (f, c) of layer l sits at the row of its position in the path.
    name = layers[3].name
    c_in = layers[3].shape[1]
    path = perms[name].path()
    position = int((path == 5 * c_in + 2).nonzero()[0][0])
    row = model.layout.offsets[3] + position
    with torch.no_grad():
        expected = model.predictor(model.embedding[row:row + 1]) * model.layer_scale[3]
    assert torch.allclose(out[name][5, 2].reshape(-1), expected[0], atol=1e-6)

    cfg = FitConfig(hidden=8, layers=3, emb_levels=2)
    package = load_package_bytes(build_package(model, target, cfg, source_sha256="s", summary={}).to_bytes())
    back = package.model().weights()
    assert all(torch.equal(back[k], out[k]) for k in out)


def test_first_layer_per_coordinate_equals_the_full_product_in_value_and_gradient():
    """SeparableFirstLayer against the plain [N, 6K] product, on a permuted layout with 3×3 and
    1×1 kernels (option-B shortcuts) and uneven channel counts (the 3-channel stem)."""
    from nern.models.cifar_resnet import CifarResNet

    net = CifarResNet(8, option="B")
    layers = find_modeled_layers(net)
    weights = {ly.name: p.detach() for ly in layers for n, p in net.named_parameters() if n == ly.name}
    perms = permute_network(weights, "crossfilter", None)
    torch.manual_seed(0)
    model = NernModel.create(layers, perms, NernModel.scales_of(weights, layers), hidden=16, depth=3,
                             emb_levels=5, emb_base=1.2).double()
    first = model.predictor.first
    plain = first(model.embedding)
    per_coordinate = model.first_layer(first, model.emb_window)
    torch.testing.assert_close(per_coordinate, plain, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(plain)
    grads_plain = torch.autograd.grad(plain, [first.weight, first.bias], g)
    grads_sep = torch.autograd.grad(model.first_layer(first, model.emb_window), [first.weight, first.bias], g)
    for a, b in zip(grads_plain, grads_sep):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    # and the whole model: all rows at once == the rows one by one through the plain predictor
    idx = torch.arange(model.num_kernels)
    torch.testing.assert_close(model(), model(idx), rtol=1e-12, atol=1e-12)


def test_coarse_to_fine_window_weights_each_level_and_both_paths_agree():
    """open_embedding_levels: BARF's window per level, the same for sin and cos and in all three
    coordinate blocks; the per-coordinate first layer applies it exactly as the plain product of
    the windowed embedding does."""
    from nern.models.cifar_resnet import CifarResNet

    net = CifarResNet(8, option="B")
    layers = find_modeled_layers(net)
    weights = {ly.name: p.detach() for ly in layers for n, p in net.named_parameters() if n == ly.name}
    torch.manual_seed(0)
    model = NernModel.create(layers, None, NernModel.scales_of(weights, layers), hidden=16, depth=3,
                             emb_levels=4, emb_base=1.2).double()
    model.open_embedding_levels(1.5)  # level 0 open, level 1 half open (cos-shaped: 0.5), 2 and 3 closed
    per_level = torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    expected = per_level.repeat_interleave(2).repeat(3)  # [sin0, cos0, sin1, cos1, ...] × 3 blocks
    torch.testing.assert_close(model.emb_window, expected)
    model.open_embedding_levels(1.25)
    assert math.isclose(float(model.emb_window[2]), (1 - math.cos(math.pi * 0.25)) / 2, rel_tol=1e-12)

    first = model.predictor.first
    plain = first(model.embedding * model.emb_window)
    torch.testing.assert_close(model.first_layer(first, model.emb_window), plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(), model(torch.arange(model.num_kernels)), rtol=1e-12, atol=1e-12)
    model.open_embedding_levels(4)
    assert torch.equal(model.emb_window, torch.ones_like(model.emb_window))


def test_a_windowed_fit_ends_with_every_level_open(resnet20_sd):
    from nern.train import NernRun

    cfg = FitConfig(steps=6, emb_window_steps=4, hidden=8, layers=2, emb_levels=3, w_kd=0, w_fmd=0,
                    permute="none", device="cpu", lr_warmup_steps=0)
    run = NernRun(resnet20_sd, cfg, None)
    run.train_step()  # step 0: only level 0
    assert run.model.emb_window.tolist() == [1.0, 1.0] + [0.0] * 4 + [1.0, 1.0] + [0.0] * 4 + [1.0, 1.0] + [0.0] * 4
    for _ in range(5):
        run.train_step()
    assert torch.equal(run.model.emb_window, torch.ones(18))
    with pytest.raises(ValueError, match="emb_window_steps"):
        FitConfig(steps=100, emb_window_steps=100)
