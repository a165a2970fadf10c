"""The API's reads of jobs: one job, the status row, pages of a tenant's jobs, artifacts,
metric points and a tenant's usage."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, RowMapping, Text, and_, bindparam, cast, func, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..models import Artifact, Job, MetricPoint
from ..states import JobState


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
