"""The clocks the job store's decisions use: ours, and the database server's."""

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
