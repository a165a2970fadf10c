"""The sweeper's reads and writes: publishing, lapsed leases and time limits, retention,
live workers per queue, queue statistics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from .. import webhooks
from ..models import Job
from ..states import TERMINAL, JobState, Stage
from .clock import db_now


def mark_published(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(published_at=db_now(session)))


def unpublished_jobs(session: Session, republish_seconds: float | None = None) -> list[tuple[str, str]]:
    """(id, queue) of queued jobs whose Celery message was never sent (or must be sent again),
    and, with `republish_seconds`, those sent longer ago than that and still not claimed: the
    broker may have lost the message (Redis restarted without persistence, flushed). Sending a
    job twice is harmless: the claim in the DB lets one worker run it."""
    unsent = Job.published_at.is_(None)
    if republish_seconds is not None:
        unsent = or_(unsent, Job.published_at < db_now(session) - timedelta(seconds=republish_seconds))
    rows = session.execute(select(Job.id, Job.queue).where(Job.state == JobState.queued.value, unsent))
    return [(r.id, r.queue) for r in rows]


def expire_leases(session: Session, stall_seconds: float = 0.0) -> int:
    """Handle running jobs whose worker stopped heartbeating, or whose step stopped advancing
    (watchdog, `stall_seconds` > 0: the worker lives but the job hangs), and jobs past their
    time limit; returns how many changed.

    Time limit passed → failed. Cancel requested → cancelled; attempts used up → failed with the
    reason; else → queued again (published by the caller through `unpublished_jobs`). A
    re-queued stalled job's worker finds its lease gone at its next heartbeat and stops.
    """
    now = db_now(session)
    changed = _fail_past_time_limit(session, now)
    lapsed = and_(Job.state == JobState.running.value, Job.lease_expires_at < now)
    if stall_seconds > 0:
        stalled = and_(Job.state == JobState.running.value, Job.step_at < now - timedelta(seconds=stall_seconds))
        changed += _fail_stalled_last_attempt(session, stalled, now, stall_seconds)
        lapsed = or_(lapsed, stalled)
    return changed + _settle_lapsed(session, lapsed, now)


def _end_where(session: Session, cond: Sequence[Any], state: JobState, now: datetime,
               error: str | None = None) -> int:
    """Move the jobs matching `cond` to the terminal `state` (with `error` when given) and
    record their webhook events; returns how many moved."""
    values: dict[str, Any] = {"state": state.value, "lease_owner": None, "finished_at": now}
    if error is not None:
        values["error"] = error
    ended = session.execute(update(Job).where(*cond).values(**values).returning(Job.id, Job.tenant_id)).all()
    webhooks.record_terminal(session, ended, state.value)
    return len(ended)


def _fail_past_time_limit(session: Session, now: datetime) -> int:
    """Fail queued or running jobs started longer ago than their `spec.time_limit_s`."""
    active = [JobState.running.value, JobState.queued.value]
    limited = session.execute(
        select(Job.id, Job.started_at, Job.time_limit_s)
        .where(Job.state.in_(active), Job.time_limit_s.is_not(None), Job.started_at.is_not(None))
    ).all()
    changed = 0
    for job_id, started, limit in limited:
        if started + timedelta(seconds=limit) < now:
            changed += _end_where(session, (Job.id == job_id, Job.state.in_(active)), JobState.failed, now,
                                  error=f"the job ran past its time limit of {limit:g} s (spec.time_limit_s)")
    return changed


def _fail_stalled_last_attempt(session: Session, stalled: Any, now: datetime, stall_seconds: float) -> int:
    """Watchdog: fail stalled jobs that used up their attempts (and were not cancelled)."""
    return _end_where(
        session, (stalled, Job.attempts >= Job.max_attempts, Job.cancel_requested.is_(False)), JobState.failed, now,
        error=f"the job's step did not advance for {stall_seconds:g} s on every attempt "
        "(watchdog); gave up after the last attempt",
    )


def _settle_lapsed(session: Session, lapsed: Any, now: datetime) -> int:
    """Jobs whose lease lapsed (or that stalled): cancel requested → cancelled; attempts used
    up → failed; else → queued again, to be published once more."""
    changed = _end_where(session, (lapsed, Job.cancel_requested.is_(True)), JobState.cancelled, now)
    changed += _end_where(
        session, (lapsed, Job.attempts >= Job.max_attempts), JobState.failed, now,
        error="the worker running this job stopped responding on every attempt "
        "(lease expired); gave up after the last attempt",
    )
    return changed + session.execute(
        update(Job)
        .where(lapsed)
        .values(state=JobState.queued.value, stage=Stage.queued.value, lease_owner=None, published_at=None)
    ).rowcount


def finished_before(session: Session, days: float, limit: int = 100) -> list[str]:
    """Ids of finished jobs whose end lies more than `days` ago (retention)."""
    cutoff = db_now(session) - timedelta(days=days)
    return list(session.scalars(
        select(Job.id).where(Job.state.in_([s.value for s in TERMINAL]), Job.finished_at < cutoff).limit(limit)
    ))


def queue_workers(session: Session, within_seconds: float) -> dict[str, int]:
    """Live worker processes per queue (heartbeat within `within_seconds`, `api.jobstore.workers`);
    queues without any are absent."""
    from ..workers import Worker

    cutoff = db_now(session) - timedelta(seconds=within_seconds)
    out: dict[str, int] = {}
    for queues in session.scalars(select(Worker.queues).where(Worker.heartbeat_at >= cutoff)):
        for q in queues.split(","):
            out[q] = out.get(q, 0) + 1
    return out


def mark_waiting(session: Session, live: dict[str, int], within_seconds: float) -> None:
    """Say on each queued job whether a live worker serves its queue (`waiting_reason`)."""
    queues = set(session.scalars(select(Job.queue).where(Job.state == JobState.queued.value).distinct()))
    for q in queues:
        reason = None if live.get(q) else (
            f"no live worker serves the '{q}' queue (none seen for {within_seconds:g} s); the job waits for one")
        session.execute(
            update(Job).where(Job.state == JobState.queued.value, Job.queue == q,
                              Job.waiting_reason.is_distinct_from(reason)).values(waiting_reason=reason)
        )


def queued_by_queue(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.state == JobState.queued.value).group_by(Job.queue)).all()
    return {q: n for q, n in rows}


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {state: n for state, n in rows}
