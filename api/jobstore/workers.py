"""Worker heartbeats: one `workers` row per worker process that runs jobs (Celery pool child).

Each pool process upserts its row every `heartbeat_seconds` (`worker/beacon.py`): when it was
last alive, the GPU memory its jobs hold, and how many jobs it has claimed. `/metrics` reads
them; rows silent for a day are deleted, so restarts do not grow the table (or the label set).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import BigInteger, Integer, String, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from .models import Base, UTCDateTime

FORGET_AFTER = timedelta(days=1)


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid, as in jobs.lease_owner
    hostname: Mapped[str] = mapped_column(String(200))
    queues: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    jobs_total: Mapped[int] = mapped_column(Integer, default=0)


def _now(session: Session) -> datetime:
    """The database's clock: a worker's heartbeat is judged by it (`crud.queue_workers`), so a
    worker whose own clock is off is still seen alive, and a dead one still seen gone."""
    from .crud import db_now

    return db_now(session)


def beat(session: Session, name: str, hostname: str, queues: str, gpu_memory_bytes: int | None) -> None:
    """Record that this worker process is alive (insert on its first beat)."""
    now = _now(session)
    res = session.execute(
        update(Worker).where(Worker.name == name).values(heartbeat_at=now, gpu_memory_bytes=gpu_memory_bytes)
    )
    if res.rowcount == 0:
        session.add(Worker(name=name, hostname=hostname, queues=queues, started_at=now, heartbeat_at=now,
                           gpu_memory_bytes=gpu_memory_bytes, jobs_total=0))
    session.execute(delete(Worker).where(Worker.heartbeat_at < now - FORGET_AFTER))


def count_job(session: Session, name: str) -> None:
    session.execute(update(Worker).where(Worker.name == name).values(jobs_total=Worker.jobs_total + 1))


def recent(session: Session, within: timedelta = timedelta(hours=1)) -> list[Worker]:
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= _now(session) - within).order_by(Worker.name)))
