"""Typed dependencies for the routes: settings, DB session, the caller's tenant, and the app's
services (artifact store, dispatcher, metrics, caches).

The app keeps its services in one `Services` object (`app.state.services`, built by
`api.main.create_app`); this module is the only place that reaches into `app.state`, and routes
take what they need as typed parameters (`store: StoreDep`, `dispatcher: DispatcherDep`, ...).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from .dispatch import Dispatcher
from .jobstore import crud
from .jobstore.artifacts import ArtifactStore
from .jobstore.db import get_sessionmaker, session_scope
from .jobstore.settings import Settings
from .notify import WebhookSender
from .problems import ProblemError
from .status_cache import StatusCache
from .telemetry import HttpMetrics


class KeyCache:
    """Checked API keys kept in memory for a few seconds, so job polling costs no key lookup.

    A revoked key stops working within `auth_cache_seconds`.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[int, float]] = {}

    def get(self, key_hash: str) -> int | None:
        hit = self._entries.get(key_hash)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def put(self, key_hash: str, tenant_id: int) -> None:
        if self.ttl > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (tenant_id, time.monotonic() + self.ttl)


class KeyFailures:
    """Failed API-key checks per client address over the last minute (per API process): past
    `limit`, every request of that address answers 429 for a while, the right key included."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._seen: dict[str, list[float]] = {}

    def blocked(self, client: str) -> float:
        """Seconds until `client` may try again (0 = not blocked)."""
        now = time.monotonic()
        times = [t for t in self._seen.get(client, ()) if t > now - self.window]
        if times:
            self._seen[client] = times
        else:
            self._seen.pop(client, None)
        return times[0] + self.window - now if len(times) >= self.limit else 0.0

    def record(self, client: str) -> None:
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen.setdefault(client, []).append(time.monotonic())


@dataclass
class Services:
    """What one API process holds for its whole life."""

    settings: Settings
    store: ArtifactStore
    dispatcher: Dispatcher
    key_cache: KeyCache
    metrics: HttpMetrics
    webhook_sender: WebhookSender
    status_cache: StatusCache
    key_failures: KeyFailures
    default_tenant_id: int | None = None  # set at start-up when auth is off

    @classmethod
    def build(cls, settings: Settings) -> Services:
        return cls(
            settings=settings,
            store=ArtifactStore(settings.artifact_root),
            dispatcher=Dispatcher(settings),
            key_cache=KeyCache(settings.auth_cache_seconds),
            metrics=HttpMetrics.for_database(
                settings.database_url, max(3 * settings.heartbeat_seconds, settings.lease_seconds)),
            webhook_sender=WebhookSender(settings),
            status_cache=StatusCache(settings.status_cache_seconds),
            key_failures=KeyFailures(settings.key_failures_per_minute),
        )


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_app_settings(services: ServicesDep) -> Settings:
    return services.settings


def get_store(services: ServicesDep) -> ArtifactStore:
    return services.store


def get_dispatcher(services: ServicesDep) -> Dispatcher:
    return services.dispatcher


def get_metrics(services: ServicesDep) -> HttpMetrics:
    return services.metrics


def get_status_cache(services: ServicesDep) -> StatusCache:
    return services.status_cache


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
MetricsDep = Annotated[HttpMetrics, Depends(get_metrics)]
StatusCacheDep = Annotated[StatusCache, Depends(get_status_cache)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    # A Session opens no connection until first used, so creating it here is cheap; the sync
    # route that uses it runs in the thread pool.
    with get_sessionmaker(settings.database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})


async def get_tenant(request: Request, services: ServicesDep) -> int:
    """The tenant id of the caller's API key (Bearer); 401 without a valid key."""
    settings = services.settings
    if not settings.auth:
        assert services.default_tenant_id is not None
        return services.default_tenant_id
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key_hash = crud.hash_key(token)
    tenant_id = services.key_cache.get(key_hash)
    if tenant_id is None:
        client = request.client.host if request.client else "?"
        wait = services.key_failures.blocked(client)
        if wait > 0:
            raise ProblemError(429, "too many failed API-key attempts from this address; try again later",
                               kind="too-many-key-failures", headers={"Retry-After": str(int(wait) + 1)})
        tenant_id = await run_in_threadpool(_lookup_key, settings.database_url, token)
        if tenant_id is None:
            services.key_failures.record(client)
            raise _unauthorized("invalid or revoked API key")
        services.key_cache.put(key_hash, tenant_id)
    return tenant_id


def _lookup_key(url: str, token: str) -> int | None:
    with session_scope(url) as session:
        return crud.tenant_for_key(session, token)


TenantDep = Annotated[int, Depends(get_tenant)]
