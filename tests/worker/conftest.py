"""Worker tests: a service on SQLite with Redis as the broker, short leases, 2 attempts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from harness import Deployment, flush_redis  # noqa: E402

REDIS_DB = 12


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    flush_redis(REDIS_DB)
    dep = Deployment(tmp_path_factory.mktemp("workers"), broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
                     max_attempts=2)
    try:
        dep.start_api()
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def key(deployment) -> str:
    return deployment.create_key("tenant-w")
