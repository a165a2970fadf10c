"""The one training loop: event order, timing, early stop and abort."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from nern.trainer import Callback, Trainer


class CountingTask:
    def __init__(self, start: int = 0):
        self.step = start
        self.train_seconds = 0.0

    def train_step(self) -> dict[str, float]:
        self.step += 1
        return {"loss": 1.0 / self.step, "lr": 0.1}


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple] = []

    def on_train_start(self, trainer):
        self.events.append(("start", trainer.step))

    def on_step_start(self, trainer):
        self.events.append(("step_start", trainer.step))

    def on_step_end(self, trainer, losses):
        self.events.append(("step_end", trainer.step, losses.get("loss")))

    def on_train_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_events_in_order_from_a_resumed_step():
    rec = Recorder()
    task = CountingTask(start=2)
    Trainer(task, 4, [rec]).run()
    assert rec.events == [("start", 2), ("step_start", 2), ("step_end", 3, 1 / 3), ("step_start", 3),
                          ("step_end", 4, 1 / 4), ("end", 4)]
    assert task.train_seconds > 0


def test_request_stop_ends_after_the_step_and_still_ends_training():
    class StopAtTwo(Callback):
        def on_step_end(self, trainer, losses):
            if trainer.step == 2:
                trainer.request_stop()

    rec = Recorder()
    Trainer(CountingTask(), 10, [StopAtTwo(), rec]).run()
    assert rec.events[-1] == ("end", 2)


def test_an_exception_in_a_callback_aborts_without_the_end_event():
    class Boom(Callback):
        def on_step_start(self, trainer):
            if trainer.step == 1:
                raise RuntimeError("stop")

    rec = Recorder()
    with pytest.raises(RuntimeError):
        Trainer(CountingTask(), 5, [Boom(), rec]).run()
    assert ("end", 1) not in rec.events and rec.events[-1] == ("step_end", 1, 1.0)


def test_callbacks_may_lengthen_the_schedule_and_eta_follows():
    class Extend(Callback):
        def on_step_end(self, trainer, losses):
            if trainer.step == 1:
                trainer.steps = 3

    task = CountingTask()
    trainer = Trainer(task, 1, [Extend()])
    trainer.run()
    assert task.step == 3 and trainer.eta_seconds() == 0
    assert trainer.seconds_per_step == pytest.approx(task.train_seconds / 3)


class LazyLosses(Mapping):
    """A task's losses whose reading is counted (as reading a GPU task's losses waits for the device)."""

    reads = 0

    def __init__(self, **values):
        self._values = values

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        LazyLosses.reads += 1
        return iter(self._values)

    def __len__(self):
        return len(self._values)


class LazyTask(CountingTask):
    def train_step(self):
        super().train_step()
        return LazyLosses(loss=1.0 / self.step, lr=0.1)


def test_losses_are_read_every_log_every_steps_and_at_the_last():
    rec = Recorder()
    LazyLosses.reads = 0
    with pytest.raises(ValueError):
        Trainer(LazyTask(), 7, [rec], log_every=0)
    Trainer(LazyTask(), 7, [rec], log_every=3).run()
    ends = [e for e in rec.events if e[0] == "step_end"]
    assert [(step, loss) for _, step, loss in ends if loss is not None] == [(3, 1 / 3), (6, 1 / 6), (7, 1 / 7)]
    assert LazyLosses.reads == 3  # the steps in between were never read


def test_history_and_progress_use_only_read_steps():
    from types import SimpleNamespace

    from nern.callbacks import History, ProgressReport

    run = SimpleNamespace(history=[], train_seconds=0.0)
    progress = []
    task = CountingTask()
    Trainer(task, 800, [History(run), ProgressReport(progress.append)], log_every=3).run()
    # a point at the first read at or after each multiple of 800 // 200 = 4, and the last step
    steps = [h["step"] for h in run.history]
    assert steps[:4] == [6, 9, 12, 18] and steps[-1] == 800 and len(steps) == 200
    assert all(h["loss"] == 1 / h["step"] for h in run.history)  # each point holds its own step's losses
    assert [p.step for p in progress][:3] == [3, 6, 9] and progress[-1].step == 800
