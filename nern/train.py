"""NeRN training: fit a predictor to a pretrained network, with checkpoint / resume.

    result = fit(state_dict, FitConfig(steps=2000), work_dir=Path("run"), on_progress=print)
    save_package(result.package, "resnet20.nern")

Every step predicts the kernels in one batched call, writes them into the network through the
index map built once (`KernelLayout`) and runs the network with `torch.func.functional_call`,
so gradients of all three losses reach the predictor.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .averaging import ParameterAverage
from .config import FitConfig
from .data import InputSource, fixed_subset, load_images
from .embedding import embed_coordinates
from .errors import CancelledError, ConfigError
from .evaluate import evaluate_weights, layer_errors
from .losses import FeatureMapRecorder, distillation_loss, feature_map_loss, reconstruction_loss
from .optim import learning_rate, make_optimizer
from .package import Package, build_package
from .permute import LayerPermutation, permute_network, smoothness
from .precision import resolve_amp
from .predictor import KernelPredictor
from .reconstruct import KernelLayout, find_modeled_layers, run_with_weights
from .targets import feature_map_modules, load_target

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
NATIVE_IMAGE_SIZE = {"resnet18": 224, "resnet34": 224, "resnet50": 224}
MAGNITUDE_BATCH_PROB = 0.2  # reference: 80% uniform subsets, 20% norm-weighted draws


@dataclass
class Progress:
    stage: str  # "smoothing" | "training" | "evaluating" | "compressing" (nern.deliver's fine-tuning)
    step: int
    total_steps: int
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None


@dataclass
class FitResult:
    package: Package
    summary: dict


def resolve_device(pref: str) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


class NernRun:
    """Everything a fit needs, built once: target, layout, embeddings, predictor, optimiser."""

    def __init__(self, state_dict: dict[str, torch.Tensor], config: FitConfig, source_sha256: str | None,
                 on_progress: Callable[[Progress], None] | None = None,
                 permutations: dict[str, LayerPermutation] | None = None):
        """`permutations` (e.g. a package's stored ones) replace computing config.permute's."""
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.amp = resolve_amp(config.amp, self.device)
        self.source_sha256 = source_sha256
        kwargs = {"num_classes": config.num_classes} if config.num_classes else {}
        model, self.arch, self.arch_kwargs = load_target(state_dict, config.arch, **kwargs)
        self.original = {k: v.detach().clone() for k, v in state_dict.items()}
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.image_size = config.image_size or NATIVE_IMAGE_SIZE.get(self.arch, 32)

        layers = find_modeled_layers(self.model)
        weights = {layer.name: self.original[layer.name] for layer in layers}
        self.smoothness_before = {n: smoothness(w) for n, w in weights.items()}
        self.permutations = None
        paths = None
        self.permute_seconds = 0.0
        if permutations is not None:
            self.permutations = permutations
        elif config.permute != "none":
            if on_progress:
                on_progress(Progress("smoothing", 0, config.steps))
            t0 = time.perf_counter()
            self.permutations = permute_network(weights, config.permute, source_sha256)
            self.permute_seconds = time.perf_counter() - t0
        if self.permutations is not None:
            paths = [self.permutations[layer.name].path() for layer in layers]
        self.smoothness_after = {
            layer.name: smoothness(weights[layer.name], None if paths is None else paths[i])
            for i, layer in enumerate(layers)
        }
        self.layout = KernelLayout(layers, paths)
        dev = self.device
        self.embedding = embed_coordinates(self.layout.coords, config.emb_levels, config.emb_base).to(dev)
        self.targets = self.layout.from_weights(weights).to(dev)
        self.mask = self.layout.valid_mask().to(dev)
        # Per-layer scale: the predictor emits kernels in units of each layer's weight std, so
        # a 16-channel stem and a 64-channel block get the same share of the predictor's range.
        self.layer_scale = torch.stack([weights[n].float().std() for n in self.layout.names]).clamp_min(1e-8)
        self.row_scale = self.layer_scale[self.layout.layer_of_row].unsqueeze(1).to(dev)
        self.kernel_norms = self.targets.norm(dim=1)

        torch.manual_seed(config.seed)
        self.predictor = KernelPredictor(
            self.embedding.shape[1], config.hidden, config.layers, self.layout.k_max
        ).to(dev)
        self.optimizer = make_optimizer(
            self.predictor.parameters(), config.optimizer, config.lr, config.betas, config.weight_decay
        )
        self.average = ParameterAverage(self.predictor, config.ema_decay) if config.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(config.seed)
        self.distill = config.w_kd > 0 or config.w_fmd > 0
        self.inputs = (
            InputSource(config.data, self.image_size, config.augment, self.gen) if self.distill else None
        )
        self.fmd_names = feature_map_modules(self.arch, self.model) if config.w_fmd > 0 else []
        self.step = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.resumed_from_step = 0
        self._cached_rows: torch.Tensor | None = None

    # ---- prediction ---------------------------------------------------------------------
    def predict_rows(self) -> torch.Tensor:
        """All kernels, predictor row order, in weight units (no grad)."""
        with torch.no_grad():
            return self.predictor(self.embedding) * self.row_scale

    def predicted_weights(self, averaged: bool = True) -> dict[str, torch.Tensor]:
        """The reconstruction that is evaluated and packaged: from the parameter average when
        config.ema_decay > 0 (and `averaged`), else from the current parameters."""
        use_average = averaged and self.average is not None
        with self.average.applied(self.predictor) if use_average else contextlib.nullcontext():
            return self.layout.to_weights(self.predict_rows())

    def predictor_state(self) -> dict[str, torch.Tensor]:
        """The predictor parameters a package stores (the average when config.ema_decay > 0)."""
        if self.average is not None:
            return self.average.averaged_state_dict(self.predictor)
        return self.predictor.state_dict()

    def _predict(self, embedding: torch.Tensor) -> torch.Tensor:
        """Predictor forward with gradients; bf16 matrix products when amp resolved to on."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.predictor(embedding)
        return out.float()

    def _sample_kernels(self, n: int) -> torch.Tensor:
        total = self.layout.num_kernels
        if torch.rand((), generator=self.gen).item() < MAGNITUDE_BATCH_PROB:
            return torch.multinomial(self.kernel_norms.cpu() + 1e-12, n, replacement=True, generator=self.gen)
        return torch.randperm(total, generator=self.gen)[:n]

    # ---- one step -----------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.config
        lr = learning_rate(self.step, cfg.steps, cfg.lr, cfg.min_lr, cfg.lr_warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        kb = cfg.kernel_batch_size
        if kb == 0 or kb >= self.layout.num_kernels:
            pred = self._predict(self.embedding) * self.row_scale
            idx = None
            rows, target, mask, scale = pred, self.targets, self.mask, self.row_scale
        else:
            idx = self._sample_kernels(kb).to(self.device)
            pred_b = self._predict(self.embedding[idx]) * self.row_scale[idx]
            rows, target, mask, scale = pred_b, self.targets[idx], self.mask[idx], self.row_scale[idx]
        if cfg.rec_normalize:
            l_rec = reconstruction_loss(rows / scale, target / scale, mask)
        else:
            l_rec = reconstruction_loss(rows, target, mask)
        loss = cfg.w_rec * l_rec
        out = {"rec": l_rec.item()}

        if self.distill and self.step >= cfg.distill_warmup_steps:
            if idx is None:
                full = pred
            else:
                if self._cached_rows is None or self.step % cfg.repredict_every == 0:
                    self._cached_rows = self.predict_rows()
                full = self._cached_rows.index_put((idx,), pred_b)
            x = self.inputs.next_batch(cfg.batch_size).to(self.device)
            with FeatureMapRecorder(self.model, self.fmd_names) as rec:
                with torch.no_grad():
                    t_logits = self.model(x)
                    t_maps = [m.detach() for m in rec.maps] if self.fmd_names else []
                s_logits = run_with_weights(self.model, self.layout.to_weights(full), x)
                s_maps = rec.maps if self.fmd_names else []
            if cfg.w_kd > 0:
                l_kd = distillation_loss(s_logits, t_logits)
                loss = loss + cfg.w_kd * l_kd
                out["kd"] = l_kd.item()
            if cfg.w_fmd > 0:
                l_fmd = feature_map_loss(s_maps, t_maps)
                loss = loss + cfg.w_fmd * l_fmd
                out["fmd"] = l_fmd.item()

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.predictor.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.predictor)
        self.step += 1
        out["loss"] = loss.item()
        out["lr"] = lr
        if not all(math.isfinite(v) for v in out.values()):
            raise ConfigError(f"training diverged at step {self.step} (non-finite loss); lower lr")
        return out

    # ---- checkpoint / resume -----------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": self.config.model_dump(mode="json"),
            "source_sha256": self.source_sha256,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "predictor": self.predictor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "generator": self.gen.get_state(),
            "inputs": self.inputs.state_dict() if self.inputs else None,
            "history": self.history,
        }

    def save_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written state

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["config"] != self.config.model_dump(mode="json"):
            raise ConfigError(f"{path} was written by a different configuration; use a fresh work_dir")
        if state["source_sha256"] != self.source_sha256:
            raise ConfigError(f"{path} belongs to a different checkpoint; use a fresh work_dir")
        self.predictor.load_state_dict(state["predictor"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.gen.set_state(state["generator"].cpu())
        if self.inputs is not None and state["inputs"] is not None:
            self.inputs.load_state_dict(state["inputs"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.history = list(state["history"])
        self.resumed_from_step = self.step


def load_eval_data(config: FitConfig, image_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not config.eval_data:
        return None
    images, labels = load_images(config.eval_data, image_size)
    if labels is None:
        raise ConfigError(f"eval_data {config.eval_data!r} has no labels; evaluation needs a labelled .npz")
    return fixed_subset(images, labels, config.eval_limit)


def fit(
    state_dict: dict[str, torch.Tensor],
    config: FitConfig,
    *,
    work_dir: Path | str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_eval: Callable[[int, float, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    source_sha256: str | None = None,
    time_budget_s: float | None = None,
) -> FitResult:
    """Fit a NeRN predictor to `state_dict`; resume from `work_dir/train_state.pt` if present.

    on_eval(step, train_seconds, metrics) is called after each periodic evaluation (its time
    is not counted as training time). `time_budget_s` ends training early once that much
    training time has passed (the schedule still runs over `config.steps`).
    """
    run = NernRun(state_dict, config, source_sha256, on_progress)
    state_path = Path(work_dir) / STATE_FILE if work_dir is not None else None
    if state_path is not None and state_path.is_file():
        run.load_state(state_path)
        log.info("resumed from step %d", run.step)
    eval_data = load_eval_data(config, run.image_size)

    def evaluate_now() -> dict:
        if eval_data is None:
            return {}
        return evaluate_weights(run.model, run.predicted_weights(), *eval_data, device=run.device)

    start_wall = time.perf_counter()
    start_train = run.train_seconds
    while run.step < config.steps:
        if should_stop is not None and should_stop():
            raise CancelledError(f"cancelled at step {run.step}")
        t0 = time.perf_counter()
        losses = run.train_step()
        run.train_seconds += time.perf_counter() - t0
        done = run.step
        rate = (run.train_seconds - start_train) / max(1, done - run.resumed_from_step)
        if done % max(1, config.steps // 200) == 0 or done == config.steps:
            run.history.append({"step": done, "t": round(run.train_seconds, 3), **losses})
        if on_progress is not None:
            on_progress(Progress("training", done, config.steps, losses, losses["lr"],
                                 run.train_seconds, rate * (config.steps - done)))
        if config.eval_every and done % config.eval_every == 0 and done < config.steps and eval_data is not None:
            metrics = evaluate_now()
            if on_eval is not None:
                on_eval(done, run.train_seconds, metrics)
        if state_path is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
            run.save_state(state_path)
        if time_budget_s is not None and run.train_seconds >= time_budget_s:
            break

    if on_progress is not None:
        on_progress(Progress("evaluating", run.step, config.steps, {}, 0.0, run.train_seconds, None))
    weights = run.predicted_weights()
    metrics = evaluate_now()
    if on_eval is not None and metrics:
        on_eval(run.step, run.train_seconds, metrics)
    originals = {n: run.original[n] for n in run.layout.names}
    summary = {
        "arch": run.arch,
        "steps": run.step,
        "train_seconds": round(run.train_seconds, 2),
        "wall_seconds": round(time.perf_counter() - start_wall, 2),
        "permute_seconds": round(run.permute_seconds, 2),
        "precision": "bf16" if run.amp else "fp32",
        "resumed_from_step": run.resumed_from_step,
        "final_losses": run.history[-1] if run.history else {},
        "relative_weight_error": layer_errors(weights, originals, total=True),
        "layer_errors": layer_errors(weights, originals),
        "smoothness": {
            n: {"before": round(run.smoothness_before[n], 4), "after": round(run.smoothness_after[n], 4)}
            for n in run.layout.names
        },
        **{k: v for k, v in metrics.items()},
    }
    package = build_package(run, summary)
    summary["package_bytes"] = package.size_report()["package_bytes"]
    return FitResult(package=package, summary=summary)


__all__ = ["FitResult", "NernRun", "Progress", "fit", "resolve_device"]
