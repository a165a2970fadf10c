"""Job stores for the tests that call `api.jobstore` directly, without processes: a migrated
SQLite file or PostgreSQL database, emptied between tests, and job rows written straight into it."""

from __future__ import annotations

import uuid
from pathlib import Path

from harness import PG_ADMIN_URL, create_pg_database, drop_pg_database
from sqlalchemy import text

from api.jobstore import crud
from api.jobstore.db import get_engine, migrate, session_scope
from api.jobstore.models import Base, Job


def sqlite_store(folder: Path) -> str:
    url = f"sqlite:///{folder / 'nern.db'}"
    migrate(url)
    return url


def pg_unreachable() -> str | None:
    """Why PostgreSQL on 127.0.0.1:5432 cannot be used, or None when it can."""
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as e:
        return f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {str(e).strip().splitlines()[0]}"


class PgStore:
    """A fresh PostgreSQL database of the test session's own, migrated; `empty()` between tests."""

    def __init__(self) -> None:
        self.name = create_pg_database()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}"
        migrate(self.url)

    def empty(self) -> str:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with get_engine(self.url).begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        return self.url

    def drop(self) -> None:
        get_engine(self.url).dispose()
        drop_pg_database(self.name)


def insert_job(url: str, **fields) -> tuple[str, int]:
    """A job row of tenant 't' (queued unless `fields` say otherwise); returns (id, tenant id)."""
    with session_scope(url) as s:
        tenant = crud.get_or_create_tenant(s, "t")
        job = Job(id=uuid.uuid4().hex, tenant_id=tenant.id, arch="resnet20", queue="cpu", spec={}, state="queued",
                  stage="queued", progress=0.0, step=0, total_steps=0, attempts=0, max_attempts=2,
                  cancel_requested=False, created_at=crud.db_now(s), checkpoint_name="c.th",
                  checkpoint_sha256="0" * 64, checkpoint_bytes=1)
        for k, v in fields.items():
            setattr(job, k, v)
        s.add(job)
        return job.id, tenant.id
