"""Test-only stand-in for nern.train / nern.package while the library does not ship them yet.

Put this folder on PYTHONPATH of a worker process: if `nern.train` imports, nothing happens.
The stand-in follows the library contract (fit with work_dir resume, Progress, should_stop →
CancelledError, FitResult.package/.summary); its "package" stores the weights themselves.
"""

import importlib
import sys
import types

try:
    importlib.import_module("nern.train")
except ImportError:
    import os
    import time
    from dataclasses import dataclass, field

    import torch

    from nern.errors import CancelledError

    @dataclass
    class Progress:
        stage: str
        step: int
        total_steps: int
        losses: dict = field(default_factory=dict)
        lr: float = 0.0
        elapsed_s: float = 0.0
        eta_s: float | None = None

    @dataclass
    class Package:
        weights: dict

    @dataclass
    class FitResult:
        package: Package
        summary: dict

    def fit(state_dict, config, *, work_dir, on_progress=None, should_stop=None, source_sha256=None):
        delay = float(os.environ.get("NERN_SHIM_STEP_SECONDS", "0.05"))
        state_path = work_dir / "train_state.pt"
        start, resumed = 0, 0
        if state_path.exists():
            start = resumed = torch.load(state_path, weights_only=True)["step"]
        t0 = time.monotonic()
        if on_progress:
            on_progress(Progress("smoothing", start, config.steps))
        for step in range(start + 1, config.steps + 1):
            if should_stop and should_stop():
                raise CancelledError("stopped on request")
            time.sleep(delay)
            if on_progress:
                el = time.monotonic() - t0
                on_progress(Progress("training", step, config.steps, {"rec": 1.0 / step, "kd": 0.5 / step},
                                     config.lr, el, el / (step - start) * (config.steps - step)))
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                torch.save({"step": step}, state_path)
        if on_progress:
            on_progress(Progress("evaluating", config.steps, config.steps))
        pkg = Package({k: v.clone() for k, v in state_dict.items()})
        return FitResult(pkg, {"original_top1": None, "reconstructed_top1": None, "agreement": None,
                               "steps": config.steps, "resumed_from_step": resumed, "layer_errors": {}})

    def save_package(package, path):
        torch.save(package.weights, path)

    def load_package(path):
        return Package(torch.load(path, weights_only=True))

    def reconstruct(package, original_state_dict):
        return {k: v.clone() for k, v in package.weights.items()}

    train = types.ModuleType("nern.train")
    train.Progress, train.FitResult, train.fit = Progress, FitResult, fit
    package = types.ModuleType("nern.package")
    package.Package, package.save_package, package.load_package = Package, save_package, load_package
    package.reconstruct = reconstruct
    sys.modules["nern.train"], sys.modules["nern.package"] = train, package
    import nern

    nern.train, nern.package = train, package
