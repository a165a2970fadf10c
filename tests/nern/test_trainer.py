"""The one training loop: event order, timing, early stop and abort."""

from __future__ import annotations

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
        self.events.append(("step_end", trainer.step, losses["loss"]))

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
