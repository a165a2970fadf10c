"""The API's state changes of a job on a client's request: cancel, retry, delete."""

from __future__ import annotations

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from .. import webhooks
from ..models import Artifact, Job, MetricPoint
from ..states import RETRYABLE, TERMINAL, JobState, Stage
from .clock import db_now


def request_cancel(session: Session, job: Job) -> bool:
    """Cancel a queued job at once; flag a running one (its worker stops within a few steps).

    Returns False when the job had already finished.
    """
    now = db_now(session)
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.queued.value)
        .values(state=JobState.cancelled.value, cancel_requested=True, finished_at=now)
    )
    if res.rowcount == 1:
        webhooks.record_terminal(session, [(job.id, job.tenant_id)], JobState.cancelled.value)
    else:
        res = session.execute(
            update(Job).where(Job.id == job.id, Job.state == JobState.running.value).values(cancel_requested=True)
        )
    session.flush()
    session.refresh(job)
    return res.rowcount == 1


def retry_job(session: Session, job: Job) -> bool:
    """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
    res = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state.in_([s.value for s in RETRYABLE]))
        .values(
            state=JobState.queued.value, stage=Stage.queued.value, attempts=0, cancel_requested=False, error=None,
            lease_owner=None, lease_expires_at=None, published_at=None, finished_at=None,
        )
    )
    session.flush()
    session.refresh(job)
    return res.rowcount == 1


def delete_job(session: Session, job: Job) -> bool:
    """Remove a queued or finished job's row with its artifacts and metric points (the caller
    removes its files). A running job is not deleted: False."""
    deletable = [JobState.queued.value, *(s.value for s in TERMINAL)]
    for model in (Artifact, MetricPoint):
        session.execute(delete(model).where(model.job_id == job.id))
    res = session.execute(delete(Job).where(Job.id == job.id, Job.state.in_(deletable)))
    return res.rowcount == 1
