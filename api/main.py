"""Builds the FastAPI application (run with `uvicorn api.main:app` or `nern serve`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from . import problems
from .deps import KeyCache
from .dispatch import Dispatcher
from .jobstore import crud
from .jobstore.artifacts import ArtifactStore
from .jobstore.db import migrate, session_scope
from .jobstore.settings import Settings, get_settings
from .logs import RequestIdMiddleware
from .notify import WebhookSender
from .routes import dashboard, health, insights, jobs, webhooks
from .telemetry import HttpMetrics, MetricsMiddleware

log = logging.getLogger("nern.api")


def _prepare(settings: Settings) -> int | None:
    settings.ensure_dirs()
    migrate(settings.database_url)
    if settings.auth:
        return None
    with session_scope(settings.database_url) as session:
        return crud.get_or_create_tenant(session, "default").id


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = HttpMetrics()
    metrics.bind_db(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.default_tenant_id = await run_in_threadpool(_prepare, settings)
        app.state.dispatcher.start()
        app.state.webhook_sender.start()
        try:
            yield
        finally:
            app.state.webhook_sender.stop()
            app.state.dispatcher.stop()

    app = FastAPI(
        title="NeRN service",
        version="0.1.0",
        summary="Compress a pretrained CNN's convolution weights into a NeRN predictor.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = ArtifactStore(settings.artifact_root)
    app.state.dispatcher = Dispatcher(settings)
    app.state.webhook_sender = WebhookSender(settings)
    app.state.key_cache = KeyCache(settings.auth_cache_seconds)
    app.state.metrics = metrics
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(insights.router)
    app.include_router(dashboard.router)
    app.include_router(webhooks.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: ids cover every line
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` builds the app on first access, from the environment's settings.
    if name == "app":
        return create_app()
    raise AttributeError(name)
