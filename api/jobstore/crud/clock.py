"""The clocks of the job store: the database server's, and ours.

Worker and API clocks may differ: every time a decision compares (leases, heartbeats and the
watchdog, time limits, re-sending lost messages, live workers, webhook delivery leases and
retries, retention) is written and compared in the database's clock (`db_now`), so processes
on different machines agree. `utcnow` (this process's clock) is left for records no decision
reads: a job's `created_at`, tenants and API keys, the time in a webhook attempt's log."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def db_now(session: Session) -> datetime:
    """The database server's clock: lease decisions use it, so workers and API processes whose
    clocks differ still agree. (SQLite is a file on this machine: its clock is ours.)"""
    if session.get_bind().dialect.name == "sqlite":
        return utcnow()
    now = session.scalar(select(func.now()))
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)
