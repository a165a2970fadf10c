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
    _add_openapi_links(app)
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: ids cover every line
    return app


# OpenAPI links from a submitted job to what can be done with it: generated clients and
# stateful fuzzers (schemathesis) follow `id` from POST /jobs into the job's routes.
_JOB_LINKS = {
    "GetJob": ("get", "/jobs/{job_id}"),
    "CancelJob": ("post", "/jobs/{job_id}/cancel"),
    "RetryJob": ("post", "/jobs/{job_id}/retry"),
    "DeleteJob": ("delete", "/jobs/{job_id}"),
    "JobMetrics": ("get", "/jobs/{job_id}/metrics"),
    "JobArtifacts": ("get", "/jobs/{job_id}/artifacts"),
}


def _add_openapi_links(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        paths = schema["paths"]
        links = {
            name: {"operationId": paths[path][method]["operationId"], "parameters": {"job_id": "$response.body#/id"}}
            for name, (method, path) in _JOB_LINKS.items()
            if method in paths.get(path, {})
        }
        for method, path, status in (("post", "/jobs", "202"), ("post", "/jobs/{job_id}/retry", "202"),
                                     ("get", "/jobs/{job_id}", "200")):
            response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
            if response is not None:
                response["links"] = links
        listing = paths.get("/jobs", {}).get("get", {}).get("responses", {}).get("200")
        if listing is not None:  # the newest job of a page
            listing["links"] = {
                name: {**link, "parameters": {"job_id": "$response.body#/items/0/id"}} for name, link in links.items()
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app` builds the app on first access, from the environment's settings.
    if name == "app":
        return create_app()
    raise AttributeError(name)
