"""`/healthz` (the process answers), `/readyz` (DB and broker reachable), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from ..deps import DispatcherDep, MetricsDep, SettingsDep
from ..jobstore.db import ping

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
def metrics(http_metrics: MetricsDep) -> Response:
    # prometheus-client's exposition; job and worker series are read from the DB (api/telemetry.py).
    return Response(http_metrics.render(), media_type=CONTENT_TYPE_LATEST)
