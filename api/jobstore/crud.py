"""Every database read and write of the service (API, worker and CLI use these functions).

State changes are conditional UPDATEs (`... WHERE state = ... AND lease_owner = ...`) so that
concurrent API processes and workers never both win a transition.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    Engine,
    RowMapping,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import webhooks
from .models import ApiKey, Artifact, Job, MetricPoint, Tenant
from .states import RETRYABLE, TERMINAL, JobState, Stage, overall_progress

KEY_PREFIX = "nern_"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def db_now(session: Session) -> datetime:
    """The database server's clock: lease decisions use it, so workers and API processes whose
    clocks differ still agree. (SQLite is a file on this machine: its clock is ours.)"""
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    now = session.scalar(select(func.now()))
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- tenants and keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> tuple[str, ApiKey]:
    """Create an API key for a tenant (created if new). Returns the plain key, shown only once."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(tenant_id=tenant.id, key_hash=hash_key(plain), prefix=plain[:12], created_at=utcnow())
    session.add(key)
    session.flush()
    return plain, key


def revoke_key(session: Session, key_or_prefix: str) -> int:
    """Revoke a key given in full or by its listed prefix; returns how many keys were revoked."""
    cond = ApiKey.key_hash == hash_key(key_or_prefix)
    if not key_or_prefix.startswith(KEY_PREFIX) or len(key_or_prefix) <= 12:
        cond = or_(cond, ApiKey.prefix == key_or_prefix)
    res = session.execute(
        update(ApiKey).where(cond, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return res.rowcount


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(select(ApiKey, Tenant.name).join(Tenant).order_by(ApiKey.id)).all()
    return [(k, name) for k, name in rows]


def count_active_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0


def tenant_for_key(session: Session, plain: str) -> int | None:
    return session.scalar(
        select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    )


# --------------------------------------------------------------------------- jobs (API side)


def get_job(session: Session, tenant_id: int, job_id: str) -> Job | None:
    """A tenant's job, or None — also for another tenant's job (the API answers 404 for both)."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


# The status endpoint's hot path reads the public columns without the ORM, and the JSON
# columns as their stored text, which goes into the response without a decode/encode round.
_PRIVATE = ("tenant_id", "lease_owner", "lease_expires_at", "published_at", "idempotency_key", "request_sha256",
            "step_at", "time_limit_s", "input_bytes")
_JSON_COLUMNS = ("spec", "summary")
_JOB_BY_ID = select(
    *(c for c in Job.__table__.c if c.name not in _PRIVATE + _JSON_COLUMNS),
    *(cast(Job.__table__.c[name], Text).label(name) for name in _JSON_COLUMNS),
).where(Job.__table__.c.id == bindparam("job_id"), Job.__table__.c.tenant_id == bindparam("tenant_id"))


def job_row(engine: Engine, tenant_id: int, job_id: str) -> RowMapping | None:
    """A tenant's job as one row: public columns, with `spec` and `summary` as JSON text.

    Tried twice when the first connection turns out dead (the database restarted or failed
    over): pollers then see no error at all."""
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                return conn.execute(_JOB_BY_ID, {"job_id": job_id, "tenant_id": tenant_id}).mappings().first()
        except DBAPIError as e:
            if attempt == 2 or not e.connection_invalidated:
                raise
    return None


def find_idempotent(session: Session, tenant_id: int, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.created_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raises ValueError on a malformed token."""
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        ts = datetime.fromisoformat(created)
        if ts.tzinfo is None or not isinstance(job_id, str):
            raise ValueError("bad cursor")
        return cls(ts, job_id)


def list_jobs(
    session: Session,
    tenant_id: int,
    *,
    states: Sequence[str] = (),
    arch: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: Cursor | None = None,
    limit: int = 20,
) -> tuple[list[Job], Cursor | None]:
    """Newest first; keyset pagination on (created_at, id), so pages stay stable under inserts."""
    q = select(Job).where(Job.tenant_id == tenant_id)
    if states:
        q = q.where(Job.state.in_(list(states)))
    if arch:
        q = q.where(Job.arch == arch)
    if created_after:
        q = q.where(Job.created_at >= created_after)
    if created_before:
        q = q.where(Job.created_at < created_before)
    if cursor:
        q = q.where(
            or_(Job.created_at < cursor.created_at, and_(Job.created_at == cursor.created_at, Job.id < cursor.id))
        )
    rows = list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    nxt = Cursor(rows[limit - 1].created_at, rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], nxt


def request_cancel(session: Session, job: Job) -> bool:
    """Cancel a queued job at once; flag a running one (its worker stops within a few steps).

    Returns False when the job had already finished.
    """
    now = utcnow()
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


def mark_published(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))


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
    changed = 0
    active = [JobState.running.value, JobState.queued.value]
    limited = session.execute(
        select(Job.id, Job.started_at, Job.time_limit_s)
        .where(Job.state.in_(active), Job.time_limit_s.is_not(None), Job.started_at.is_not(None))
    ).all()
    for job_id, started, limit in limited:
        if started + timedelta(seconds=limit) < now:
            ended = session.execute(
                update(Job).where(Job.id == job_id, Job.state.in_(active))
                .values(state=JobState.failed.value, lease_owner=None, finished_at=now,
                        error=f"the job ran past its time limit of {limit:g} s (spec.time_limit_s)")
                .returning(Job.id, Job.tenant_id)
            ).all()
            webhooks.record_terminal(session, ended, JobState.failed.value)
            changed += len(ended)
    lapsed = and_(Job.state == JobState.running.value, Job.lease_expires_at < now)
    if stall_seconds > 0:
        stalled = and_(Job.state == JobState.running.value, Job.step_at < now - timedelta(seconds=stall_seconds))
        ended = session.execute(
            update(Job)
            .where(stalled, Job.attempts >= Job.max_attempts, Job.cancel_requested.is_(False))
            .values(state=JobState.failed.value, lease_owner=None, finished_at=now,
                    error=f"the job's step did not advance for {stall_seconds:g} s on every attempt "
                    "(watchdog); gave up after the last attempt")
            .returning(Job.id, Job.tenant_id)
        ).all()
        webhooks.record_terminal(session, ended, JobState.failed.value)
        changed += len(ended)
        lapsed = or_(lapsed, stalled)
    ended = session.execute(
        update(Job)
        .where(lapsed, Job.cancel_requested.is_(True))
        .values(state=JobState.cancelled.value, lease_owner=None, finished_at=now)
        .returning(Job.id, Job.tenant_id)
    ).all()
    webhooks.record_terminal(session, ended, JobState.cancelled.value)
    changed += len(ended)
    ended = session.execute(
        update(Job)
        .where(lapsed, Job.attempts >= Job.max_attempts)
        .values(
            state=JobState.failed.value, lease_owner=None, finished_at=now,
            error="the worker running this job stopped responding on every attempt "
            "(lease expired); gave up after the last attempt",
        )
        .returning(Job.id, Job.tenant_id)
    ).all()
    webhooks.record_terminal(session, ended, JobState.failed.value)
    changed += len(ended)
    changed += session.execute(
        update(Job)
        .where(lapsed)
        .values(state=JobState.queued.value, stage=Stage.queued.value, lease_owner=None, published_at=None)
    ).rowcount
    return changed


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


def delete_job(session: Session, job: Job) -> bool:
    """Remove a queued or finished job's row with its artifacts and metric points (the caller
    removes its files). A running job is not deleted: False."""
    deletable = [JobState.queued.value, *(s.value for s in TERMINAL)]
    for model in (Artifact, MetricPoint):
        session.execute(delete(model).where(model.job_id == job.id))
    res = session.execute(delete(Job).where(Job.id == job.id, Job.state.in_(deletable)))
    return res.rowcount == 1


def finished_before(session: Session, days: float, limit: int = 100) -> list[str]:
    """Ids of finished jobs whose end lies more than `days` ago (retention)."""
    cutoff = db_now(session) - timedelta(days=days)
    return list(session.scalars(
        select(Job.id).where(Job.state.in_([s.value for s in TERMINAL]), Job.finished_at < cutoff).limit(limit)
    ))


def tenant_usage(session: Session, tenant_id: int) -> tuple[int, int]:
    """(queued + running jobs, stored bytes: uploads + artifacts) of a tenant."""
    active = session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.tenant_id == tenant_id, Job.state.in_([JobState.queued.value, JobState.running.value]))
    ) or 0
    inputs = session.scalar(
        select(func.coalesce(func.sum(func.coalesce(Job.input_bytes, Job.checkpoint_bytes)), 0))
        .where(Job.tenant_id == tenant_id)
    ) or 0
    outputs = session.scalar(
        select(func.coalesce(func.sum(Artifact.size), 0)).join(Job, Job.id == Artifact.job_id)
        .where(Job.tenant_id == tenant_id)
    ) or 0
    return int(active), int(inputs) + int(outputs)


def queue_workers(session: Session, within_seconds: float) -> dict[str, int]:
    """Live worker processes per queue (heartbeat within `within_seconds`, `api.jobstore.workers`);
    queues without any are absent."""
    from .workers import Worker

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


def list_artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    return session.get(Artifact, (job_id, name))


def metric_points(session: Session, job_id: str, max_points: int = 500) -> list[MetricPoint]:
    """The recorded points of every attempt in order, thinned evenly to at most max_points."""
    points = list(session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id)))
    if len(points) > max_points:
        stride = len(points) / max_points
        keep = sorted({int(i * stride) for i in range(max_points)} | {len(points) - 1})
        points = [points[i] for i in keep]
    return points


# --------------------------------------------------------------------------- jobs (worker side)


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
    now = utcnow()
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
        .values(state=state.value, error=error, finished_at=utcnow(), lease_owner=None, lease_expires_at=None)
        .returning(Job.id, Job.tenant_id)
    ).all()
    webhooks.record_terminal(session, res, state.value)
    return len(res) == 1
