import pytest
import torch

from nern.errors import TargetError
from nern.targets import create_target, detect_target, list_targets, load_target

CIFAR = [n for n in list_targets() if not n.startswith(("resnet18", "resnet34", "resnet50"))]


def test_registry_lists_every_family():
    names = set(list_targets())
    for depth in (20, 32, 44, 56, 110):
        assert f"resnet{depth}" in names and f"resnet{depth}b" in names
    assert {"resnet18", "resnet34", "resnet50"} <= names


def test_unknown_name_is_a_clear_error():
    with pytest.raises(TargetError, match="unknown architecture 'resnet21'.*known: .*resnet20"):
        create_target("resnet21")


@pytest.mark.parametrize("name", list_targets())
def test_round_trip_detect_and_strict_load(name):
    kwargs = {"num_classes": 7}
    model = create_target(name, **kwargs)
    sd = model.state_dict()
    detected, dkw = detect_target(sd)
    assert detected == name and dkw == kwargs
    rebuilt, arch, _ = load_target(sd)
    assert arch == name
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_cifar_resnet_depths_and_shortcuts():
    a, b = create_target("resnet20"), create_target("resnet20b")
    assert sum(1 for k in a.state_dict() if k.endswith("conv1.weight") or k.endswith("conv2.weight")) == 19
    assert not any("shortcut" in k for k in a.state_dict())
    assert sum(1 for k in b.state_dict() if k.endswith("shortcut.0.weight")) == 2
    assert len(create_target("resnet110").layer1) == 18


def test_option_a_shortcut_pads_channels_equally():
    block = create_target("resnet20").layer2[0]
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_mismatch_names_the_first_offending_key(resnet20_sd):
    with pytest.raises(TargetError, match="does not match resnet32: missing key 'layer1.3"):
        load_target(resnet20_sd, "resnet32")
    bad = dict(resnet20_sd)
    bad["layer1.0.conv1.weight"] = torch.zeros(16, 16, 5, 5)
    with pytest.raises(TargetError, match=r"'layer1.0.conv1.weight' has shape \[16, 16, 5, 5\]"):
        load_target(bad, "resnet20")


def test_shipped_checkpoints_are_detected(shared_data):
    from nern.checkpoint import load_state_dict

    if shared_data is None:
        pytest.skip("../shared/data not present")
    for depth, tag in ((20, "12fca82f"), (32, "d509ac18"), (44, "014dd654"), (56, "4bfd9763")):
        sd = load_state_dict(shared_data / f"resnet{depth}-{tag}.th")
        assert detect_target(sd) == (f"resnet{depth}", {"num_classes": 10})
