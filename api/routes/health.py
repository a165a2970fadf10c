"""`/healthz` (the process answers), `/readyz` (DB and broker reachable), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..deps import DispatcherDep, MetricsDep, SettingsDep
from ..jobstore import crud
from ..jobstore.db import ping, session_scope

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: answers while the process serves requests")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database and the broker are reachable")
async def readyz(settings: SettingsDep, dispatcher: DispatcherDep) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, check in (
        ("database", lambda: ping(settings.database_url)),
        ("broker", dispatcher.ping_broker),
    ):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as e:
            checks[name] = f"unreachable: {type(e).__name__}: {str(e)[:200]}"
    ok = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    if ok:
        return JSONResponse(body)
    body.update(type="about:blank", title="Service Unavailable", status=503, detail="; ".join(
        f"{k} {v}" for k, v in checks.items() if v != "ok"))
    return JSONResponse(body, status_code=503, media_type="application/problem+json")


@router.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
def metrics(settings: SettingsDep, http_metrics: MetricsDep, dispatcher: DispatcherDep) -> PlainTextResponse:
    with session_scope(settings.database_url) as session:
        by_state = crud.count_by_state(session)
        workers = crud.queue_workers(session, dispatcher.worker_window)
        queued = crud.queued_by_queue(session)
    return PlainTextResponse(http_metrics.render(by_state, workers, queued), media_type="text/plain; version=0.0.4")
