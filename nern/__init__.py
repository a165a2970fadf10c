"""NeRN: represent every convolution kernel of a pretrained CNN with a small MLP.

Public surface (everything else is private to the library):

    FitConfig, fit, Progress, FitResult             train a predictor (nern.train)
    load_state_dict                                 the safe checkpoint loader (sha256_file: nern.io)
    create_target, list_targets, detect_target,
    load_target                                     the architecture registry
    Package, save_package, load_package,
    reconstruct, predict_weights                    the predictor package
    evaluate_package, evaluate_weights, layer_errors   evaluation
    NernModel                                       predictor + coordinate table → weights
    Trainer, Callback                               the training loop (nern.trainer)
    NernError and subclasses                        see nern.errors
"""

__version__ = "0.1.0"

from .checkpoint import load_state_dict, load_state_dict_bytes
from .config import FitConfig
from .errors import (
    CancelledError,
    CheckpointError,
    ConfigError,
    DataError,
    NernError,
    PackageError,
    TargetError,
    UnsafeCheckpointError,
)
from .evaluate import evaluate_package, evaluate_weights, layer_errors
from .io import sha256_file
from .model import NernModel
from .package import Package, load_package, predict_weights, reconstruct, save_package
from .targets import create_target, detect_target, list_targets, load_target
from .train import FitResult, Progress, fit
from .trainer import Callback, Trainer

__all__ = [
    "Callback", "CancelledError", "CheckpointError", "ConfigError", "DataError", "FitConfig", "FitResult",
    "NernError", "Package", "PackageError", "Progress", "TargetError", "UnsafeCheckpointError",
    "NernModel", "Trainer", "__version__", "create_target", "detect_target", "evaluate_package", "evaluate_weights", "fit", "layer_errors",
    "list_targets", "load_package", "load_state_dict", "load_state_dict_bytes", "load_target",
    "predict_weights", "reconstruct", "save_package", "sha256_file",
]
