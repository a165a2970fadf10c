"""Database engine, sessions and start-up migrations (Alembic) — the one place that opens the DB."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the API read while a worker writes progress; busy_timeout waits out short locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process's one engine (connection pool) for a URL."""
    engine = _ENGINES.get(url)
    if engine is None:
        with _ENGINES_LOCK:
            engine = _ENGINES.get(url) or _create_engine(url)
            _ENGINES[url] = engine
    return engine


def _create_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database:
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # No pre-ping: it would double the round trips of every status poll; stale connections are
        # recycled instead (pool_recycle) and PostgreSQL drops idle ones only after hours.
        engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=300)
    return engine


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def forget_engines() -> None:
    """Drop this process's engines without closing the connections (they belong to the parent
    after a fork: closing would break its sessions); the next use opens fresh ones."""
    for engine in list(_ENGINES.values()):
        engine.dispose(close=False)
    _ENGINES.clear()
    get_sessionmaker.cache_clear()


@contextlib.contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with get_sessionmaker(url)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[object]:
    """Serialise concurrent start-ups (API processes, CLI) so only one runs the migrations."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(724061)"))
            try:
                yield conn
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(724061)"))
                conn.commit()
    else:
        db = make_url(str(engine.url)).database or ":memory:"
        lock_path = Path(db + ".migrate.lock") if db != ":memory:" else None
        if lock_path is None:
            yield None
            return
        with open(lock_path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield None
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def migrate(url: str) -> None:
    """Bring the schema to the latest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    engine = get_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _migration_lock(engine), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")  # independent revisions may branch from one parent


def ping(url: str) -> None:
    with get_engine(url).connect() as conn:
        conn.execute(text("SELECT 1"))
