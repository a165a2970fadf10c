"""The one training loop: a trainer that knows nothing of NeRN and talks through callbacks.

    trainer = Trainer(task, steps=2000, callbacks=[ProgressReport(print), Checkpoints(path, 100)])
    trainer.run()

A task is anything with `step` (steps done so far, e.g. after a resume), `train_seconds`
(training time so far) and `train_step() -> Mapping[str, float]` (one optimiser step; returns its
losses and "lr"). The mapping may be lazy — a GPU task returns losses still on the device
(`nern.readback.StepLosses`), and reading them makes the host wait for the device — so the
trainer reads them only every `log_every` steps and at the last step of the schedule. The
trainer times each step — only `train_step` and that read count as training time, so
evaluations and checkpoints in callbacks never inflate it — and calls, in order:

    on_train_start(trainer)
    for each step:  on_step_start(trainer)  →  task.train_step()  →  on_step_end(trainer, losses)
    on_train_end(trainer)                      (also after `trainer.request_stop()`)

`losses` is a plain dict of the losses read at this step, and {} on the steps in between (with
log_every=1, the default, every step's). Between reads the host does not wait for the device,
so `last_step_seconds` of a GPU task is the time to queue the step; a read step's includes the
device catching up, and `train_seconds` is exact at every read.

A callback stops training early with `trainer.request_stop()` (the step in flight completes), or
aborts it by raising (e.g. `CancelledError`). `nern.callbacks` has the ones fit, fine-tuning and
the benchmarks use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Protocol


class TrainTask(Protocol):
    step: int
    train_seconds: float

    def train_step(self) -> Mapping[str, float]: ...


class Callback:
    """Base class: every event is a no-op unless overridden."""

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_step_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, losses: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass


class Trainer:
    def __init__(self, task: TrainTask, steps: int, callbacks: Sequence[Callback] = (), log_every: int = 1):
        if log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {log_every}")
        self.task = task
        self.steps = steps  # callbacks may change it (the bench sets it after calibrating)
        self.callbacks = list(callbacks)
        self.log_every = log_every
        self.start_step = task.step
        self.start_seconds = task.train_seconds
        self.last_step_seconds = 0.0
        self._stop = False

    @property
    def step(self) -> int:
        return self.task.step

    @property
    def seconds_per_step(self) -> float:
        """Mean training time of the steps this trainer ran (0 before the first)."""
        done = self.task.step - self.start_step
        return (self.task.train_seconds - self.start_seconds) / done if done else 0.0

    def eta_seconds(self) -> float:
        return self.seconds_per_step * max(0, self.steps - self.task.step)

    def reads_losses(self) -> bool:
        """Whether the losses of the step just taken are read (every log_every steps, and the last)."""
        return self.task.step % self.log_every == 0 or self.task.step >= self.steps

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        self._emit("on_train_start")
        while self.task.step < self.steps and not self._stop:
            self._emit("on_step_start")
            t0 = time.perf_counter()
            losses = self.task.train_step()
            losses = dict(losses) if self.reads_losses() else {}
            self.last_step_seconds = time.perf_counter() - t0
            self.task.train_seconds += self.last_step_seconds
            self._emit("on_step_end", losses)
        self._emit("on_train_end")

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)


__all__ = ["Callback", "TrainTask", "Trainer"]
