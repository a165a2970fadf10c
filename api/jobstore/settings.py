"""Service settings, read from `NERN_*` environment variables (one pydantic-settings class).

The defaults are the embedded deployment: everything under `NERN_HOME` (default `./.nern`) — a
SQLite database, an artifact folder and a broker that needs no server (kombu's SQLAlchemy
transport on its own SQLite file). The distributed deployment sets `NERN_DATABASE_URL`
(PostgreSQL), `NERN_BROKER_URL` (Redis) and `NERN_ARTIFACT_ROOT` (a shared volume).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NERN_", extra="ignore")

    home: Path = Field(Path(".nern"), description="folder of the embedded deployment's files")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite under home")
    broker_url: str = Field("", description="Celery broker URL; empty = SQLAlchemy/SQLite under home")
    artifact_root: Path | None = Field(None, description="artifact folder; None = home/artifacts")
    data_dir: Path | None = Field(
        None, description="server-side datasets a spec may name by file name (NERN_DATA_DIR)"
    )

    # uploads
    max_upload_bytes: int = Field(512 * 2**20, ge=1, description="whole multipart body; larger is 413")
    max_upload_parts: int = Field(8, ge=2)
    max_data_bytes: int = Field(
        2 * 2**30, ge=1, description="an .npz data part's arrays, uncompressed (absolute limit, bytes)"
    )

    # job lifecycle
    lease_seconds: float = Field(60.0, gt=0, description="a worker that misses heartbeats this long loses the job")
    heartbeat_seconds: float = Field(10.0, gt=0, description="lease renewal and cancel-flag poll interval")
    max_attempts: int = Field(3, ge=1, description="claims of a job before it fails for lost workers")
    sweep_seconds: float = Field(5.0, gt=0, description="how often the API re-queues jobs with lapsed leases")
    progress_seconds: float = Field(1.0, ge=0, description="minimum interval between progress writes")
    republish_seconds: float = Field(
        300.0, gt=0, description="a queued job not claimed this long after its message was sent is sent again "
        "(the broker may have lost it; the DB claim makes duplicates no-ops)",
    )
    stall_seconds: float = Field(
        1800.0, ge=0, description="watchdog: a running job whose step has not advanced this long is re-queued "
        "(failed after its attempts); 0 = off",
    )
    db_retry_seconds: float = Field(
        30.0, gt=0, description="how long a worker retries a failing progress/result write before giving up",
    )
    jobs_per_gpu: int = Field(1, ge=1, description="pool processes of a worker that share one GPU")
    auto_queue: str = Field(
        "cpu", pattern="^(cpu|gpu)$", description="queue of `device: auto` jobs: gpu where GPU workers run",
    )
    visibility_timeout: int = Field(
        12 * 3600, ge=60, description="Redis redelivery timeout; must exceed the longest job"
    )

    # tenants
    tenant_max_active_jobs: int = Field(0, ge=0, description="queued + running jobs per tenant; 0 = no limit")
    tenant_max_bytes: int = Field(0, ge=0, description="stored bytes (uploads + artifacts) per tenant; 0 = no limit")
    retention_days: float = Field(0, ge=0, description="finished jobs older than this are deleted; 0 = kept")
    key_failures_per_minute: int = Field(
        20, ge=1, description="failed API-key checks per client address per minute before 429",
    )

    # auth
    auth: bool = Field(True, description="require API keys (on by default)")
    auth_cache_seconds: float = Field(10.0, ge=0, description="how long a checked key is trusted in memory")
    status_cache_seconds: float = Field(
        0.25, ge=0, le=5, description="GET /jobs/{id} bodies served from memory this long (0 = off)"
    )

    # webhooks (api/notify.py)
    webhook_allow_private: bool = Field(
        False, description="allow webhook URLs on loopback, private and link-local addresses"
    )
    webhook_max_attempts: int = Field(6, ge=1, le=20, description="tries per delivery before it is failed")
    webhook_backoff_seconds: float = Field(2.0, gt=0, description="first retry delay; doubles on each retry")
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="per attempt: connect and read timeout")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'nern.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.db'}"
        if self.artifact_root is None:
            self.artifact_root = self.home / "artifacts"
        self.artifact_root = self.artifact_root.expanduser().resolve()
        return self

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.artifact_root.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()
