"""Fixtures: one running service per database backend (SQLite embedded, PostgreSQL + Redis),
each with a `cpu` worker, and API keys of two tenants; job stores without processes on each
backend (`store_url`) or on PostgreSQL alone (`pg_url`)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from harness import Deployment, create_pg_database, drop_pg_database, flush_redis
from jobstores import PgStore, pg_unreachable, sqlite_store


@dataclass
class Service:
    deployment: Deployment
    key_a: str
    key_b: str
    backend: str

    def client(self, key: str | None = "a") -> httpx.Client:
        return self.deployment.client({"a": self.key_a, "b": self.key_b}.get(key, key) if key else None)


@pytest.fixture(
    scope="session",
    params=["sqlite", pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.redis])],
)
def service(request, tmp_path_factory) -> Service:
    home = tmp_path_factory.mktemp(f"service-{request.param}")
    pg_name = None
    if request.param == "postgres":
        pg_name = create_pg_database()
        flush_redis(11)
        dep = Deployment(home, database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_name}",
                         broker_url="redis://127.0.0.1:6379/11", max_upload_bytes=4 * 2**20, max_data_bytes=64 * 2**20, key_failures_per_minute=1000)
    else:
        dep = Deployment(home, max_upload_bytes=4 * 2**20, max_data_bytes=64 * 2**20, key_failures_per_minute=1000)
    try:
        dep.start_api()
        dep.start_worker("cpu")
        yield Service(dep, dep.create_key("tenant-a"), dep.create_key("tenant-b"), request.param)
    finally:
        dep.stop()
        if pg_name:
            drop_pg_database(pg_name)


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Service:
    """One SQLite service for the dashboard, webhook and telemetry tests: webhooks may go to
    loopback (the tests' receivers) and retry quickly."""
    dep = Deployment(tmp_path_factory.mktemp("service-live"), webhook_allow_private=1, webhook_backoff_seconds=0.3)
    try:
        dep.start_api()
        dep.start_worker("cpu")
        yield Service(dep, dep.create_key("tenant-a"), dep.create_key("tenant-b"), "sqlite")
    finally:
        dep.stop()


@pytest.fixture(scope="session")
def pg_store() -> PgStore:
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    store = PgStore()
    try:
        yield store
    finally:
        store.drop()


@pytest.fixture()
def pg_url(pg_store) -> str:
    """The session's PostgreSQL job store, emptied for the test."""
    return pg_store.empty()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """An empty, migrated job store on each backend."""
    return sqlite_store(tmp_path) if request.param == "sqlite" else request.getfixturevalue("pg_url")
