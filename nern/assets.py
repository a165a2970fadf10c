"""Files shipped with the library for the demo (see nern/assets/NOTICE.md for their licences)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"


def default_checkpoint() -> Path:
    """The shipped CIFAR-10 ResNet-20 checkpoint (BSD-2, akamaster/pytorch_resnet_cifar10)."""
    return ASSETS / "resnet20-12fca82f.th"
