"""A worker's transitions of the job it runs: claim, heartbeat, progress, finish, end, release.

Each is a conditional UPDATE on the job's state and lease owner, so a worker whose lease was
taken over changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.orm import Session

from .. import webhooks
from ..models import Artifact, Job, MetricPoint
from ..states import JobState, Stage, overall_progress
from .clock import db_now
from .queries import list_artifacts


def claim_job(session: Session, job_id: str, owner: str, lease_seconds: float) -> Job | None:
    """Take a queued job (or one whose lease lapsed) for this worker; None when not claimable.

    Counts the attempt. Refuses cancelled jobs and jobs out of attempts, so a stale or duplicate
    Celery message does nothing.
    """
    now = db_now(session)
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            Job.attempts < Job.max_attempts,
            or_(
                Job.state == JobState.queued.value,
                and_(Job.state == JobState.running.value, Job.lease_expires_at < now),
            ),
        )
        .values(
            state=JobState.running.value, stage=Stage.loading.value, attempts=Job.attempts + 1, lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now, step_at=now, error=None,
            waiting_reason=None,
        )
    )
    if res.rowcount != 1:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    if job.started_at is None:
        job.started_at = now
    session.flush()
    return job


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: float) -> tuple[bool, bool]:
    """Heartbeat. Returns (still ours, cancel requested)."""
    now = db_now(session)
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), heartbeat_at=now)
    )
    if res.rowcount != 1:
        return False, False
    return True, cancel_requested(session, job_id)


def cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def record_progress(
    session: Session,
    job_id: str,
    owner: str,
    *,
    attempt: int,
    stage: Stage,
    step: int = 0,
    total_steps: int = 0,
    eta_seconds: float | None = None,
    losses: dict[str, float] | None = None,
    lr: float | None = None,
    elapsed_s: float = 0.0,
) -> bool:
    """Write the job's stage/progress and, with losses, one metric point. False = lease lost.

    `step_at` (the watchdog's clock) moves when the step or the stage changes."""
    moved = or_(Job.step != step, Job.stage != Stage(stage).value)
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
        .values(
            step_at=case((moved, db_now(session)), else_=Job.step_at),
            stage=Stage(stage).value, step=step, total_steps=total_steps, eta_seconds=eta_seconds,
            progress=overall_progress(stage, step, total_steps),
        )
    )
    if res.rowcount != 1:
        return False
    if losses is not None:
        session.add(
            MetricPoint(
                job_id=job_id, attempt=attempt, stage=Stage(stage).value, step=step, lr=lr, elapsed_s=elapsed_s,
                losses={k: float(v) for k, v in losses.items()},
            )
        )
    return True


def record_eval_point(session: Session, job_id: str, owner: str, *, attempt: int, step: int,
                      train_seconds: float, metrics: dict[str, float]) -> bool:
    """One evaluation during or after training (top-1, agreement, ...) as a metric point with stage
    'evaluating' and `elapsed_s` = training seconds. The job's own stage is left alone."""
    if not session.scalar(select(Job.id).where(Job.id == job_id, Job.lease_owner == owner)):
        return False
    session.add(MetricPoint(job_id=job_id, attempt=attempt, stage="evaluating", step=step, lr=None,
                            elapsed_s=train_seconds, losses={k: float(v) for k, v in metrics.items()}))
    return True


def finish_job(
    session: Session,
    job_id: str,
    owner: str,
    *,
    summary: dict[str, Any],
    artifacts: Sequence[tuple[str, int, str, str]],
    resumed_from_step: int | None,
) -> bool:
    """Mark the job succeeded with its results and artifacts (name, size, sha256, media type)."""
    now = db_now(session)
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
        .values(
            state=JobState.succeeded.value, stage=Stage.done.value, progress=1.0, eta_seconds=0.0, finished_at=now,
            summary=summary, resumed_from_step=resumed_from_step, lease_owner=None, lease_expires_at=None,
        )
        .returning(Job.id, Job.tenant_id)
    ).all()
    if len(res) != 1:
        return False
    webhooks.record_terminal(session, res, JobState.succeeded.value)
    for a in list_artifacts(session, job_id):
        session.delete(a)
    session.flush()
    for name, size, sha, media in artifacts:
        session.add(Artifact(job_id=job_id, name=name, size=size, sha256=sha, media_type=media, created_at=now))
    return True


def end_job(session: Session, job_id: str, owner: str, state: JobState, error: str | None = None) -> bool:
    """Move a running job of this worker to failed or cancelled."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
        .values(state=state.value, error=error, finished_at=db_now(session), lease_owner=None, lease_expires_at=None)
        .returning(Job.id, Job.tenant_id)
    ).all()
    webhooks.record_terminal(session, res, state.value)
    return len(res) == 1


def release_job(session: Session, job_id: str, owner: str) -> bool:
    """Hand a running job back to the queue without using up its attempt (its worker is
    stopping for a deploy); the sweeper sends it again."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.running.value)
        .values(state=JobState.queued.value, stage=Stage.queued.value, attempts=Job.attempts - 1,
                lease_owner=None, lease_expires_at=None, published_at=None)
    )
    return res.rowcount == 1
