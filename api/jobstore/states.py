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

# Stages a running job passes through; "queued" while waiting, "done" once finished well.
STAGES = ("queued", "loading", "smoothing", "training", "evaluating", "compressing", "done")

# Share of the whole job each stage starts at; training fills the span up to 'evaluating'.
_STAGE_START = {
    "queued": 0.0,
    "loading": 0.0,
    "smoothing": 0.02,
    "training": 0.05,
    "evaluating": 0.90,
    "compressing": 0.95,
    "done": 1.0,
}


def overall_progress(stage: str, step: int = 0, total_steps: int = 0) -> float:
    """Progress 0–1 of the whole job from the stage and the training step."""
    start = _STAGE_START.get(stage, 0.0)
    if stage == "training" and total_steps > 0:
        return round(start + (_STAGE_START["evaluating"] - start) * min(step, total_steps) / total_steps, 4)
    return start


def queue_for_device(device: str) -> str:
    """Jobs that ask for CUDA go to the `gpu` queue, all others to `cpu`."""
    return "gpu" if device == "cuda" else "cpu"
