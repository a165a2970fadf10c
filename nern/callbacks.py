"""Trainer callbacks used by `fit`, compression fine-tuning and the benchmarks (see nern.trainer).

    StopWhen(should_stop)          raise CancelledError before a step when asked to
    History(run)                   keep ~200 loss points of the run (resumable, packaged)
    ProgressReport(on_progress)    a `Progress` at every step whose losses were read (step, losses, lr, ETA)
    Evaluations(every, evaluate)   evaluate every N steps (not counted as training time)
    Checkpoints(run, path, every)  save the resumable state every N steps, atomically
    TimeBudget(seconds)            stop once that much training time has passed
    EachStep(fn)                   call fn(step, losses) after every step ({} between reads)

Losses reach callbacks at the trainer's reads (every `log_every` steps, see nern.trainer): the
ones that report losses act on those steps only, so every point carries its own step's values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CancelledError
from .trainer import Callback, Trainer

if TYPE_CHECKING:
    from .train import NernRun


@dataclass
class Progress:
    stage: str  # "smoothing" | "training" | "evaluating" | "compressing" (nern.deliver's fine-tuning)
    step: int
    total_steps: int
    losses: dict[str, float] = field(default_factory=dict)
    lr: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None


class StopWhen(Callback):
    def __init__(self, should_stop: Callable[[], bool] | None):
        self.should_stop = should_stop

    def on_step_start(self, trainer: Trainer) -> None:
        if self.should_stop is not None and self.should_stop():
            raise CancelledError(f"cancelled at step {trainer.step}")


class History(Callback):
    """Appends {"step", "t", losses...} to `run.history` about 200 times over the schedule: at
    the first read at or after each multiple of steps // 200, and at the last step."""

    def __init__(self, run: NernRun):
        self.run = run
        self._last_read = 0

    def on_train_start(self, trainer: Trainer) -> None:
        self._last_read = trainer.step

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if not losses:
            return
        step, every = trainer.step, max(1, trainer.steps // 200)
        if step // every > self._last_read // every or step == trainer.steps:
            self.run.history.append({"step": step, "t": round(self.run.train_seconds, 3), **losses})
        self._last_read = step


class ProgressReport(Callback):
    def __init__(self, on_progress: Callable[[Progress], None] | None, stage: str = "training"):
        self.on_progress = on_progress
        self.stage = stage

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if self.on_progress is not None and losses:
            self.on_progress(Progress(self.stage, trainer.step, trainer.steps, losses, losses.get("lr", 0.0),
                                      trainer.task.train_seconds, trainer.eta_seconds()))


class Evaluations(Callback):
    """`evaluate(step)` every `every` steps, before the last (the caller evaluates the end)."""

    def __init__(self, every: int, evaluate: Callable[[int], None]):
        self.every = every
        self.evaluate = evaluate

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        step = trainer.step
        if self.every and step % self.every == 0 and step < trainer.steps:
            self.evaluate(step)


class Checkpoints(Callback):
    def __init__(self, run: NernRun, path: Path | None, every: int):
        self.run, self.path, self.every = run, path, every

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if self.path is not None and self.every and trainer.step % self.every == 0:
            self.run.save_state(self.path)


class TimeBudget(Callback):
    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        if self.seconds is not None and trainer.task.train_seconds >= self.seconds:
            trainer.request_stop()


class EachStep(Callback):
    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        self.fn(trainer.step, losses)


__all__ = ["Checkpoints", "EachStep", "Evaluations", "History", "Progress", "ProgressReport", "StopWhen",
           "TimeBudget"]
