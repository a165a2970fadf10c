"""The three NeRN losses (NERN.md §3), one file each."""

from .distillation import distillation_loss
from .feature_maps import FeatureMapRecorder, feature_map_loss
from .reconstruction import reconstruction_loss

__all__ = ["FeatureMapRecorder", "distillation_loss", "feature_map_loss", "reconstruction_loss"]
