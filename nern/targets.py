"""Architecture registry: build a target network by name, detect one from its weights.

    create_target("resnet20")            # CIFAR ResNet-20, option A shortcuts
    list_targets()                       # every registered name
    detect_target(state_dict)            # -> ("resnet20", {"num_classes": 10})

Torchvision ResNets are built without weights; their weights only ever come from a user's file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import TargetError
from .models.cifar_resnet import CifarResNet


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    build: Callable[..., nn.Module]
    # Names of the modules whose outputs feed feature-map distillation (NERN.md §3).
    feature_maps: Callable[[nn.Module], list[str]]
    default_kwargs: dict = field(default_factory=dict)
    image_size: int = 32  # the input size the network was trained at (distillation and evaluation)


def _cifar_feature_maps(model: nn.Module) -> list[str]:
    """Stem BN output, then per block: bn1, bn2 and the residual sum, all before ReLU."""
    names = ["bn1"]
    for stage in ("layer1", "layer2", "layer3"):
        for i in range(len(getattr(model, stage))):
            names += [f"{stage}.{i}.bn1", f"{stage}.{i}.bn2", f"{stage}.{i}.residual_sum"]
    return names


def _torchvision_feature_maps(model: nn.Module) -> list[str]:
    """Documented default for torchvision ResNets: the stem BN and each residual block's output."""
    names = ["bn1"]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        names += [f"{stage}.{i}" for i in range(len(getattr(model, stage)))]
    return names


def _torchvision_resnet(name: str, num_classes: int) -> nn.Module:
    import torchvision  # imported on first use: it adds seconds to every process's start-up

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def default_feature_maps(model: nn.Module) -> list[str]:
    """For any other network: the output of every BatchNorm2d (or, lacking those, every Conv2d)."""
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    return bns or [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


_REGISTRY: dict[str, TargetSpec] = {}


def register_target(spec: TargetSpec) -> None:
    _REGISTRY[spec.name] = spec


for _depth in (20, 32, 44, 56, 110):
    for _opt, _suffix in (("A", ""), ("B", "b")):
        register_target(
            TargetSpec(
                name=f"resnet{_depth}{_suffix}",
                description=f"CIFAR ResNet-{_depth}, option {_opt} shortcuts"
                + (" (zero-padded identity)" if _opt == "A" else " (1x1 conv + BN)"),
                build=(lambda d, o: lambda num_classes=10: CifarResNet(d, num_classes, o))(_depth, _opt),
                feature_maps=_cifar_feature_maps,
            )
        )

for _name in ("resnet18", "resnet34", "resnet50"):
    register_target(
        TargetSpec(
            name=_name,
            description=f"torchvision {_name} (ImageNet layout; weights from your file only)",
            build=(lambda n: lambda num_classes=1000: _torchvision_resnet(n, num_classes))(_name),
            feature_maps=_torchvision_feature_maps,
            image_size=224,
        )
    )


def list_targets() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (not n[6:].rstrip("b").isdigit() or len(n), n))


def get_target_spec(name: str) -> TargetSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TargetError(
            f"unknown architecture {name!r}; known: {', '.join(list_targets())}"
        ) from None


def create_target(name: str, **kwargs) -> nn.Module:
    """Build a registered network (random init) by name; kwargs e.g. num_classes."""
    model = get_target_spec(name).build(**kwargs)
    return model.eval()


def image_size_of(name: str | None) -> int:
    """The native input size of a registered architecture (32 for unknown names)."""
    spec = _REGISTRY.get(name) if name is not None else None
    return spec.image_size if spec is not None else 32


def feature_map_modules(name: str | None, model: nn.Module) -> list[str]:
    if name is not None and name in _REGISTRY:
        return _REGISTRY[name].feature_maps(model)
    return default_feature_maps(model)


def _count_blocks(keys: set[str], stage: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"{stage}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def detect_target(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict]:
    """Name the registered architecture these weights belong to, with its kwargs."""
    keys = set(state_dict)
    stem = state_dict.get("conv1.weight")
    if stem is None or stem.dim() != 4:
        raise TargetError("cannot detect the architecture: no 'conv1.weight' convolution; name it with arch")
    if "linear.weight" in keys and tuple(stem.shape) == (16, 3, 3, 3):
        n = _count_blocks(keys, "layer1")
        if n and all(_count_blocks(keys, s) == n for s in ("layer2", "layer3")):
            depth = 6 * n + 2
            option_b = any(".shortcut.0.weight" in k for k in keys)
            name = f"resnet{depth}{'b' if option_b else ''}"
            if name in _REGISTRY:
                return name, {"num_classes": int(state_dict["linear.weight"].shape[0])}
    if "fc.weight" in keys and tuple(stem.shape) == (64, 3, 7, 7):
        blocks = tuple(_count_blocks(keys, f"layer{i}") for i in range(1, 5))
        bottleneck = "layer1.0.conv3.weight" in keys
        name = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
                ((3, 4, 6, 3), True): "resnet50"}.get((blocks, bottleneck))
        if name:
            return name, {"num_classes": int(state_dict["fc.weight"].shape[0])}
    raise TargetError("cannot detect the architecture from the checkpoint's keys; name it with arch")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> None:
    """Raise TargetError naming the first key that keeps a strict load from working."""
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    for key, ref in expected.items():
        if key not in state_dict:
            if key in optional:
                continue
            raise TargetError(f"checkpoint does not match {arch}: missing key {key!r}")
        got = state_dict[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise TargetError(
                f"checkpoint does not match {arch}: {key!r} has shape {list(got.shape)}, "
                f"expected {list(ref.shape)}"
            )
    extra = next((k for k in state_dict if k not in expected), None)
    if extra is not None:
        raise TargetError(f"checkpoint does not match {arch}: unexpected key {extra!r}")


def load_target(
    state_dict: Mapping[str, torch.Tensor], arch: str | None = None, **kwargs
) -> tuple[nn.Module, str, dict]:
    """Build the network for these weights (named or detected) and load them strictly.

    Returns (model in eval mode, arch name, kwargs used to build it).
    """
    if arch is None:
        arch, detected = detect_target(state_dict)
        kwargs = {**detected, **kwargs}
    elif "num_classes" not in kwargs:
        for head in ("linear.weight", "fc.weight"):
            if head in state_dict and state_dict[head].dim() == 2:
                kwargs["num_classes"] = int(state_dict[head].shape[0])
    model = create_target(arch, **kwargs)
    check_state_dict(model, state_dict, arch)
    model.load_state_dict(dict(state_dict), strict=False)
    return model.eval(), arch, kwargs


@dataclass
class TargetNetwork:
    """A pretrained network ready to be modeled: the module (eval mode, frozen, holding the
    original weights), its registered name and build kwargs, and the original state_dict."""

    module: nn.Module
    arch: str
    kwargs: dict
    weights: dict[str, torch.Tensor]

    @classmethod
    def load(cls, state_dict: Mapping[str, torch.Tensor], arch: str | None = None,
             num_classes: int | None = None) -> TargetNetwork:
        kwargs = {"num_classes": num_classes} if num_classes else {}
        module, arch, kwargs = load_target(state_dict, arch, **kwargs)
        for p in module.parameters():
            p.requires_grad_(False)
        return cls(module, arch, kwargs, {k: v.detach().clone() for k, v in state_dict.items()})

    @property
    def image_size(self) -> int:
        return image_size_of(self.arch)

    def unmodeled(self, modeled: set[str]) -> dict[str, torch.Tensor]:
        """The tensors a package does not store: copied from the original at reconstruction."""
        return {k: v for k, v in self.weights.items() if k not in modeled}
