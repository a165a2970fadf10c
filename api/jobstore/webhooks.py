"""Webhooks: the tables and every read and write of them (the API's sender and routes use these).

A terminal state change writes a `job_events` row in the same transaction (`record_terminal`),
so an event cannot be lost between the state change and the notification, whichever process
made the change (worker, API cancel, API sweeper). The API's sender (`api/notify.py`) turns
each event into one `webhook_deliveries` row per subscribed hook (unique per hook and event),
then posts them, recording every attempt.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from .models import Base, UTCDateTime
from .states import JobState

EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
EVENT_FOR_STATE = {JobState.succeeded.value: "job.succeeded", JobState.failed.value: "job.failed",
                   JobState.cancelled.value: "job.cancelled"}


def _now(session: Session) -> datetime:
    """The database's clock: delivery leases and retry times are compared by API processes
    whose own clocks may differ."""
    from .crud import db_now

    return db_now(session)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobEvent(Base):
    """The outbox: one row per terminal state change, written with the change itself."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_pending", "dispatched_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_hook_event", "hook_id", "job_event_id", unique=True),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    job_event_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent on every attempt
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# --------------------------------------------------------------------------- outbox (state changes)


def record_terminal(session: Session, rows: Iterable[tuple[str, int]], state: str) -> None:
    """Queue the notification of jobs (id, tenant id) that just reached `state`, in the caller's
    transaction."""
    event = EVENT_FOR_STATE[state]
    rows = list(rows)
    now = _now(session) if rows else None
    for job_id, tenant_id in rows:
        session.add(JobEvent(job_id=job_id, tenant_id=tenant_id, event=event, created_at=now))


# --------------------------------------------------------------------------- hooks (API routes)


def create_hook(session: Session, tenant_id: int, url: str, events: list[str]) -> Webhook:
    hook = Webhook(id=uuid.uuid4().hex, tenant_id=tenant_id, url=url, events=list(events),
                   secret="whsec_" + secrets.token_urlsafe(32), created_at=_now(session))
    session.add(hook)
    session.flush()
    return hook


def list_hooks(session: Session, tenant_id: int) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id).order_by(Webhook.created_at)))


def get_hook(session: Session, tenant_id: int, hook_id: str) -> Webhook | None:
    """A tenant's hook, or None — also for another tenant's (the API answers 404 for both)."""
    return session.scalar(select(Webhook).where(Webhook.id == hook_id, Webhook.tenant_id == tenant_id))


def delete_hook(session: Session, tenant_id: int, hook_id: str) -> bool:
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.hook_id == hook_id,
                                                  WebhookDelivery.hook_id.in_(
                                                      select(Webhook.id).where(Webhook.tenant_id == tenant_id))))
    res = session.execute(delete(Webhook).where(Webhook.id == hook_id, Webhook.tenant_id == tenant_id))
    return res.rowcount == 1


def list_deliveries(session: Session, hook_id: str, limit: int = 100) -> list[WebhookDelivery]:
    return list(session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.hook_id == hook_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)
    ))


# --------------------------------------------------------------------------- sender

KEEP_EVENTS = timedelta(days=7)
KEEP_DELIVERIES = timedelta(days=30)


def prune(session: Session) -> None:
    """Forget dispatched events after a week and finished deliveries after a month."""
    now = _now(session)
    session.execute(delete(JobEvent).where(JobEvent.dispatched_at < now - KEEP_EVENTS))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.status != "pending",
                                                  WebhookDelivery.created_at < now - KEEP_DELIVERIES))


def pending_events(session: Session, limit: int = 100) -> list[JobEvent]:
    return list(session.scalars(
        select(JobEvent).where(JobEvent.dispatched_at.is_(None)).order_by(JobEvent.id).limit(limit)
    ))


def fan_out(session: Session, event: JobEvent, body_for: dict[str, str]) -> int:
    """Turn one outbox event into a delivery per subscribed hook; returns how many.

    `body_for` maps the event name to the JSON body to send. Marking the event dispatched is
    conditional, so two API processes never both fan it out.
    """
    now = _now(session)
    res = session.execute(
        update(JobEvent).where(JobEvent.id == event.id, JobEvent.dispatched_at.is_(None)).values(dispatched_at=now)
    )
    if res.rowcount != 1:
        return 0
    hooks = [h for h in session.scalars(select(Webhook).where(Webhook.tenant_id == event.tenant_id))
             if event.event in h.events]
    for h in hooks:
        session.add(WebhookDelivery(
            id=uuid.uuid4().hex, hook_id=h.id, job_event_id=event.id, job_id=event.job_id, event=event.event,
            body=body_for[event.event], status="pending", attempts=[], next_attempt_at=now, created_at=now,
        ))
    return len(hooks)


def claim_due(session: Session, lease_seconds: float, limit: int = 20) -> list[tuple[WebhookDelivery, Webhook]]:
    """Deliveries whose next attempt is due, each pushed `lease_seconds` ahead so no other sender
    takes it while this one posts."""
    now = _now(session)
    due = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ).all()
    out = []
    for d_id, at in due:
        res = session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == d_id, WebhookDelivery.next_attempt_at == at)
            .values(next_attempt_at=now + timedelta(seconds=lease_seconds))
        )
        if res.rowcount == 1:
            d = session.get(WebhookDelivery, d_id, populate_existing=True)
            hook = session.get(Webhook, d.hook_id)
            if hook is not None:
                out.append((d, hook))
    return out


def record_attempt(session: Session, delivery_id: str, attempt: dict[str, Any], *, ok: bool,
                   retry_in: float | None) -> None:
    """Append an attempt; delivered when ok, else pending again after `retry_in` s (None = give up)."""
    d = session.get(WebhookDelivery, delivery_id, populate_existing=True)
    if d is None:  # the hook was deleted meanwhile
        return
    now = _now(session)
    d.attempts = [*d.attempts, attempt]
    if ok:
        d.status, d.delivered_at, d.next_attempt_at = "delivered", now, None
    elif retry_in is None:
        d.status, d.next_attempt_at = "failed", None
    else:
        d.next_attempt_at = now + timedelta(seconds=retry_in)
