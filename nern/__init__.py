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

# The names are imported on first use (PEP 562), so `import nern.cli` or `nern.config` does not
# load torch: the service's client commands (`nern jobs ...`) start in a fraction of a second.
_EXPORTS = {
    "load_state_dict": "checkpoint", "load_state_dict_bytes": "checkpoint",
    "FitConfig": "config",
    "CancelledError": "errors", "CheckpointError": "errors", "ConfigError": "errors", "DataError": "errors",
    "NernError": "errors", "PackageError": "errors", "TargetError": "errors", "UnsafeCheckpointError": "errors",
    "evaluate_package": "evaluate", "evaluate_weights": "evaluate", "layer_errors": "evaluate",
    "sha256_file": "io",
    "NernModel": "model",
    "Package": "package", "load_package": "package", "predict_weights": "package", "reconstruct": "package",
    "save_package": "package",
    "create_target": "targets", "detect_target": "targets", "list_targets": "targets", "load_target": "targets",
    "FitResult": "train", "Progress": "train", "fit": "train",
    "Callback": "trainer", "Trainer": "trainer",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nern' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["__version__", *sorted(_EXPORTS)]
