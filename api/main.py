"""Builds the FastAPI application (run with `uvicorn api.main:app` or `nern serve`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from . import problems
from .deps import Services
from .jobstore import crud
from .jobstore.db import migrate, session_scope
from .jobstore.settings import Settings, get_settings
from .logs import RequestIdMiddleware
from .routes import dashboard, health, insights, jobs, webhooks
from .telemetry import MetricsMiddleware

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
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.default_tenant_id = await run_in_threadpool(_prepare, settings)
        services.dispatcher.start()
        services.webhook_sender.start()
        try:
            yield
        finally:
            services.webhook_sender.stop()
            services.dispatcher.stop()

    app = FastAPI(
        title="NeRN service",
        version="0.1.0",
        summary="Compress a pretrained CNN's convolution weights into a NeRN predictor.",
        lifespan=lifespan,
    )
    app.state.services = services  # read only through api.deps
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(insights.router)
    app.include_router(dashboard.router)
    app.include_router(webhooks.router)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: ids cover every line
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` builds the app on first access, from the environment's settings.
    if name == "app":
        return create_app()
    raise AttributeError(name)
