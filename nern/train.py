"""NeRN training: fit a predictor to a pretrained network, with checkpoint / resume.

    result = fit(state_dict, FitConfig(steps=2000), work_dir=Path("run"), on_progress=print)
    save_package(result.package, "resnet20.nern")

`NernRun` is one fit in progress — the target network, the NeRN model, the optimiser, the
parameter average and the distillation inputs — and its `train_step` is the method's step:
predict the kernels in one batched call, write them into the network through the index map
built once (`KernelLayout`), run it with `torch.func.functional_call` so gradients of all three
losses reach the predictor. `fit` drives it with the one training loop (`nern.trainer.Trainer`)
and the callbacks of `nern.callbacks`.

The step is device work only: the inputs are made on the run's device, the learning rate and
the average's weight are written into device tensors before it, and the losses come back as a
lazy `StepLosses` that the loop reads every `log_every` steps. On CUDA with all kernels every
step and Adam, that same step function is captured once as a CUDA graph and replayed
(`nern.graphed`, `FitConfig.cuda_graphs`); everywhere else it runs eagerly.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .averaging import ParameterAverage
from .callbacks import Checkpoints, Evaluations, History, Progress, ProgressReport, StopWhen, TimeBudget
from .config import FitConfig, resumes_as
from .conv_layout import activation_format
from .data import InputSource, load_labelled
from .errors import ConfigError
from .evaluate import evaluate_package, evaluate_weights
from .fold import FoldedNetwork
from .graphed import GraphedStep, use_cuda_graphs
from .io import atomic_write
from .losses import FeatureMapRecorder, distillation_loss, feature_map_loss, reconstruction_loss
from .model import NernModel
from .optim import learning_rate, load_optimizer_state, make_optimizer, set_learning_rate
from .package import Package, build_package
from .permute import LayerPermutation, permute_network, smoothness
from .precision import resolve_amp
from .readback import StepLosses
from .reconstruct import find_modeled_layers, run_with_weights
from .targets import TargetNetwork, feature_map_modules
from .teacher_cache import teacher_cache_for
from .trainer import Trainer

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
MAGNITUDE_BATCH_PROB = 0.2  # reference: 80% uniform subsets, 20% norm-weighted draws
CUDA_LOG_EVERY = 10  # default read-back cadence on CUDA (FitConfig.log_every=None)


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


def smooth_kernels(weights: dict[str, torch.Tensor], kind: str, source_sha256: str | None
                   ) -> tuple[dict[str, LayerPermutation] | None, float]:
    """The permutation of `kind` for every modeled layer (None for "none"), and its seconds."""
    if kind == "none":
        return None, 0.0
    t0 = time.perf_counter()
    perms = permute_network(weights, kind, source_sha256)
    return perms, time.perf_counter() - t0


class NernRun:
    """Everything a fit needs, built once: target, model, optimiser, average, inputs."""

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
        self.target = TargetNetwork.load(state_dict, config.arch, config.num_classes)
        self.target.module.to(self.device)
        self.image_size = config.image_size or self.target.image_size
        layers = find_modeled_layers(self.target.module)
        weights = {ly.name: self.target.weights[ly.name] for ly in layers}
        self.permute_seconds = 0.0
        if permutations is None and config.permute != "none" and on_progress is not None:
            on_progress(Progress("smoothing", 0, config.steps))
        if permutations is None:
            permutations, self.permute_seconds = smooth_kernels(weights, config.permute, source_sha256)
        self.smoothness = {
            ly.name: {"before": round(smoothness(weights[ly.name]), 4),
                      "after": round(smoothness(weights[ly.name],
                                                None if permutations is None else permutations[ly.name].path()), 4)}
            for ly in layers
        }
        torch.manual_seed(config.seed)
        self.model = NernModel.create(layers, permutations, NernModel.scales_of(weights, layers),
                                      hidden=config.hidden, depth=config.layers, emb_levels=config.emb_levels,
                                      emb_base=config.emb_base).to(self.device)
        self.targets = self.model.layout.from_weights(weights).to(self.device)
        self.targets_std = self.targets / self.model.row_scale  # in the predictor's units
        self.mask = self.model.layout.valid_mask().to(self.device)
        self.kernel_norms = self.targets.norm(dim=1).cpu()
        self.cuda_graphs = use_cuda_graphs(config, self.device, self.model.num_kernels)
        self.log_every = config.log_every or (CUDA_LOG_EVERY if self.device.type == "cuda" else 1)
        self._graphed = GraphedStep(lambda x, which: self._step(x, None, which), self.device,
                                    before_capture=lambda: self.optimizer.zero_grad(set_to_none=True)
                                    ) if self.cuda_graphs else None
        self.reset_optimizer()
        self.average = ParameterAverage(self.model.predictor, config.ema_decay) if config.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(config.seed)  # kernel batches (host draws)
        self.distill = config.w_kd > 0 or config.w_fmd > 0
        # Inputs are drawn on the run's device; on the CPU from the same generator as ever.
        input_gen = self.gen if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(config.seed)
        # Images (and so every activation) in the device's layout: NHWC on the CPU (nern.conv_layout).
        self.inputs = InputSource(config.data, self.image_size, config.augment, input_gen,
                                  activation_format(self.device)) if self.distill else None
        self.fmd_names = feature_map_modules(self.target.arch, self.target.module) if config.w_fmd > 0 else []
        # Distillation runs the network with its batch norms folded into the convolutions.
        self.train_net = FoldedNetwork.of(self.target.module).to(self.device) if self.distill else None
        # Without augmentation the original network's outputs are computed once, not every step.
        self.teacher_cache = teacher_cache_for(self.train_net.module, self.fmd_names, self.inputs,
                                               config.teacher_cache_mb) if self.distill else None
        self.distill_terms = [k for k, w in (("kd", config.w_kd), ("fmd", config.w_fmd)) if w > 0]
        # The late loss balance's factor on the distillation terms: a device tensor written before
        # each step (as the learning rate), so a captured step replays it. None only for an explicit
        # 1: unset, the factor follows the schedule's length (FitConfig.late_scale), which a time
        # budget may fix after the run is built.
        self.late_scale = torch.ones((), device=self.device) if config.distill_late_scale != 1.0 else None
        self.step = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.resumed_from_step = 0
        self._cached_rows: torch.Tensor | None = None

    def reset_optimizer(self) -> None:
        """A fresh optimiser for the predictor's current parameters (graph-safe when the step is
        captured); fine-tuning starts one."""
        cfg = self.config
        self.optimizer = make_optimizer(self.model.predictor.parameters(), cfg.optimizer, cfg.peak_lr(), cfg.betas,
                                        cfg.weight_decay, graph_safe=self.cuda_graphs)
        if self._graphed is not None:
            self._graphed.reset()  # the graph held the old optimiser's state tensors

    # ---- the reconstruction that is evaluated and packaged --------------------------------
    def averaged(self):
        """Context in which the model holds what is evaluated and packaged: the parameter
        average when config.ema_decay > 0, else the current parameters."""
        return self.average.applied(self.model.predictor) if self.average is not None else contextlib.nullcontext()

    def predicted_weights(self) -> dict[str, torch.Tensor]:
        with self.averaged():
            return self.model.weights()

    def package(self, summary: dict) -> Package:
        with self.averaged():
            return build_package(self.model, self.target, self.config, source_sha256=self.source_sha256,
                                 summary=summary)

    # ---- one step -------------------------------------------------------------------------
    def _predict(self, idx: torch.Tensor | None) -> torch.Tensor:
        """Predictor forward with gradients in std units; bf16 matrix products when amp is on."""
        # no cast cache: a captured step must recast the weights each replay (it costs nothing here)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            out = self.model.normalized(idx)
        return out.float()

    def _sample_kernels(self, n: int) -> torch.Tensor:
        total = self.model.num_kernels
        if torch.rand((), generator=self.gen).item() < MAGNITUDE_BATCH_PROB:
            return torch.multinomial(self.kernel_norms + 1e-12, n, replacement=True, generator=self.gen)
        return torch.randperm(total, generator=self.gen)[:n]

    def _distillation(self, rows: torch.Tensor, x: torch.Tensor, which: torch.Tensor | None
                      ) -> dict[str, torch.Tensor]:
        """KD and feature-map terms of the network rebuilt from `rows` (weight units) on inputs x;
        the original network's outputs come from the teacher cache when `which` (x's image rows)
        is given, else from running it on x."""
        cfg, net = self.config, self.train_net.module
        with FeatureMapRecorder(net, self.fmd_names) as rec:
            if which is not None:
                t_logits, t_maps = self.teacher_cache.lookup(which)
            else:
                with torch.no_grad():
                    t_logits = net(x)
                    t_maps = [m.detach() for m in rec.maps] if self.fmd_names else []
            s_logits = run_with_weights(net, self.train_net.weights_for(self.model.to_weights(rows)), x)
            s_maps = rec.maps if self.fmd_names else []
        out = {}
        if cfg.w_kd > 0:
            out["kd"] = distillation_loss(s_logits, t_logits)
        if cfg.w_fmd > 0:
            out["fmd"] = feature_map_loss(s_maps, t_maps)
        return out

    def train_step(self) -> StepLosses:
        """One optimiser step. The host sets this step's learning rate and average weight in
        place, draws the kernel batch and the input batch, then runs `_step` (replayed as a CUDA
        graph when `cuda_graphs`); the losses stay on the device until read."""
        cfg = self.config
        lr = learning_rate(self.step, cfg.steps, cfg.peak_lr(), cfg.min_lr, cfg.lr_warmup_steps)
        set_learning_rate(self.optimizer, lr)
        if cfg.emb_window_steps:
            self.model.open_embedding_levels(1 + (cfg.emb_levels - 1) * self.step / cfg.emb_window_steps)
        if self.average is not None:
            self.average.advance()
        if self.late_scale is not None:
            late = self.step >= int(cfg.late_from() * cfg.steps)
            self.late_scale.fill_(cfg.late_scale() if late else 1.0)
        idx = self._kernel_batch()
        distilling = self.distill and self.step >= cfg.distill_warmup_steps
        x, which = self._input_batch() if distilling else (None, None)
        values = self._graphed(x, which) if self._graphed is not None else self._step(x, idx, which)
        self.step += 1
        names = ["rec", *(self.distill_terms if distilling else []), "loss"]
        return StepLosses(names, values, {"lr": lr}, self.step)

    def _kernel_batch(self) -> torch.Tensor | None:
        """Rows carrying gradients this step; None = all (kernel_batch_size 0)."""
        kb = self.config.kernel_batch_size
        return None if kb == 0 or kb >= self.model.num_kernels else self._sample_kernels(kb).to(self.device)

    def _input_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This step's inputs, and their image rows where the teacher cache serves them."""
        if self.teacher_cache is None:
            return self.inputs.next_batch(self.config.batch_size), None
        which = self.inputs.take(self.config.batch_size)
        return self.inputs.batch(which), which

    def _step(self, x: torch.Tensor | None, idx: torch.Tensor | None, which: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Forward, losses, backward, clipping, optimiser step and average update on inputs x
        (None: reconstruction only; `which`: their rows in the teacher cache) for kernel rows idx
        (None: all). Device work only — no host sync — so with idx None it is what `GraphedStep`
        captures. Returns [terms..., loss]."""
        cfg = self.config
        norm = self._predict(idx)  # std units
        scale = self.model.row_scale if idx is None else self.model.row_scale[idx]
        mask = self.mask if idx is None else self.mask[idx]
        rows = norm * scale
        if cfg.rec_normalize:
            l_rec = reconstruction_loss(norm, self.targets_std if idx is None else self.targets_std[idx], mask)
        else:
            l_rec = reconstruction_loss(rows, self.targets if idx is None else self.targets[idx], mask)
        terms = {"rec": l_rec}
        if x is not None:
            if idx is not None:
                if self._cached_rows is None or self.step % cfg.repredict_every == 0:
                    with torch.no_grad():
                        self._cached_rows = self.model()
                rows = self._cached_rows.index_put((idx,), rows)
            terms.update(self._distillation(rows, x, which))
        weights = {"kd": cfg.w_kd, "fmd": cfg.w_fmd}
        distill = sum(weights[k] * v for k, v in terms.items() if k != "rec")
        loss = cfg.w_rec * l_rec + (distill if self.late_scale is None else self.late_scale * distill)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.predictor.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.blend(self.model.predictor)
        return torch.stack([t.detach() for t in (*terms.values(), loss)])

    # ---- checkpoint / resume --------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config": self.config.model_dump(mode="json"),
            "choices": self.config.choices(),
            "source_sha256": self.source_sha256,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "predictor": self.model.predictor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "generator": self.gen.get_state(),
            "inputs": self.inputs.state_dict() if self.inputs else None,
            "history": self.history,
        }

    def save_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: torch.save(self.state(), tmp))  # a crash never leaves half a state

    def load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if not resumes_as(state["config"], state.get("choices"), self.config):
            raise ConfigError(f"{path} was written by a different configuration; use a fresh work_dir")
        if state["source_sha256"] != self.source_sha256:
            raise ConfigError(f"{path} belongs to a different checkpoint; use a fresh work_dir")
        self.model.predictor.load_state_dict(state["predictor"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self._graphed is not None:
            self._graphed.reset()  # loading made new optimiser state tensors
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.gen.set_state(state["generator"].cpu())
        if self.inputs is not None and state["inputs"] is not None:
            self.inputs.load_state_dict(state["inputs"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.history = list(state["history"])
        self.resumed_from_step = self.step


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
    eval_data = load_labelled(config.eval_data, run.image_size, config.eval_limit) if config.eval_data else None

    def evaluate_now(step: int) -> None:
        metrics = evaluate_weights(run.target.module, run.predicted_weights(), *eval_data, device=run.device)
        if on_eval is not None:
            on_eval(step, run.train_seconds, metrics)

    start_wall = time.perf_counter()
    Trainer(run, config.steps, [
        StopWhen(should_stop), History(run), ProgressReport(on_progress),
        Evaluations(config.eval_every if eval_data is not None else 0, evaluate_now),
        Checkpoints(run, state_path, config.checkpoint_every), TimeBudget(time_budget_s),
    ], log_every=run.log_every).run()

    if on_progress is not None:
        on_progress(Progress("evaluating", run.step, config.steps, {}, 0.0, run.train_seconds, None))
    summary = {
        "arch": run.target.arch,
        "steps": run.step,
        "train_seconds": round(run.train_seconds, 2),
        "permute_seconds": round(run.permute_seconds, 2),
        "precision": "bf16" if run.amp else "fp32",
        "cuda_graphs": run.cuda_graphs,
        "teacher_cache": run.teacher_cache is not None,
        "distill_late_scale": run.config.late_scale(),
        "distill_late_from": run.config.late_from(),
        "lr": run.config.peak_lr(),
        "resumed_from_step": run.resumed_from_step,
        "final_losses": run.history[-1] if run.history else {},
        "smoothness": run.smoothness,
    }
    package = run.package(summary)
    metrics = evaluate_package(package, run.target.weights, eval_data, device=run.device)
    if on_eval is not None and eval_data is not None:
        on_eval(run.step, run.train_seconds, metrics)
    summary.update(metrics)
    summary["wall_seconds"] = round(time.perf_counter() - start_wall, 2)
    summary["package_bytes"] = package.size_report()["package_bytes"]
    return FitResult(package=package, summary=summary)


__all__ = ["FitResult", "NernRun", "Progress", "fit", "resolve_device"]
