"""The one place that knows the job states, stages and how progress maps onto them.

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
      │  ▲              │
      │  └─lease lapse──┘   (re-queued while attempts < max_attempts, else failed)
      └──cancel──▶ cancelled          failed | cancelled ──retry──▶ queued
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
RETRYABLE = frozenset({JobState.failed, JobState.cancelled})

class Stage(str, Enum):
    """Where a job is: `queued` while waiting, the library's stages while running, `done` at the end.

    The values are the strings stored in the `stage` column and returned by the API (and the
    `stage` of `nern.train.Progress`, which the worker passes through as `Stage(p.stage)`).
    """

    queued = "queued"
    loading = "loading"
    smoothing = "smoothing"
    training = "training"
    evaluating = "evaluating"
    compressing = "compressing"
    done = "done"


# Share of the whole job each stage starts at; training fills the span up to 'evaluating'.
_STAGE_START = {
    Stage.queued: 0.0,
    Stage.loading: 0.0,
    Stage.smoothing: 0.02,
    Stage.training: 0.05,
    Stage.evaluating: 0.90,
    Stage.compressing: 0.95,
    Stage.done: 1.0,
}


def overall_progress(stage: Stage, step: int = 0, total_steps: int = 0) -> float:
    """Progress 0–1 of the whole job from the stage and the training step."""
    stage = Stage(stage)
    start = _STAGE_START[stage]
    if stage is Stage.training and total_steps > 0:
        return round(start + (_STAGE_START[Stage.evaluating] - start) * min(step, total_steps) / total_steps, 4)
    return start


def queue_for_device(device: str, auto_queue: str = "cpu") -> str:
    """`cuda` jobs go to the `gpu` queue, `cpu` jobs to `cpu`, and `auto` jobs to the queue the
    deployment names (NERN_AUTO_QUEUE: `gpu` where GPU workers run; a GPU worker also serves
    `cpu`, and `auto` runs on the GPU of whichever worker takes it)."""
    if device == "cuda":
        return "gpu"
    if device == "cpu":
        return "cpu"
    return auto_queue
