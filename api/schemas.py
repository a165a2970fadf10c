"""Request and response models. The job spec *is* the library's FitConfig plus job-level fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .jobstore.states import JobState, Stage


class JobStatus(BaseModel):
    """JobPublic without its two JSON documents (the status route splices those in as stored)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    state: JobState
    stage: Stage
    progress: float = Field(description="0–1 over the whole job")
    step: int
    total_steps: int
    eta_seconds: float | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    error: str | None
    arch: str
    queue: str
    checkpoint_name: str
    checkpoint_sha256: str
    checkpoint_bytes: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    resumed_from_step: int | None
    waiting_reason: str | None = Field(
        None, description="why a queued job is not being taken (e.g. no live worker serves its queue)"
    )


class JobPublic(JobStatus):
    spec: dict[str, Any] = Field(description="the job spec as stored (data parts point at their stored files)")
    summary: dict[str, Any] | None = Field(description="results: top-1 accuracies, agreement, sizes, timings")


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    size: int
    sha256: str
    media_type: str
    created_at: datetime


class ArtifactList(BaseModel):
    items: list[ArtifactPublic]


class MetricPointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    stage: Stage
    step: int
    lr: float | None
    elapsed_s: float
    losses: dict[str, float]


class JobMetrics(BaseModel):
    job_id: str
    points: list[MetricPointPublic]
