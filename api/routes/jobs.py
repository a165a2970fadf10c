"""`/jobs`: submit, read, list, cancel, retry, metrics and artifacts of a tenant's jobs."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..deps import DispatcherDep, MetricsDep, SessionDep, SettingsDep, StatusCacheDep, StoreDep, TenantDep
from ..jobstore import crud
from ..jobstore.db import get_engine, get_sessionmaker
from ..jobstore.models import Job
from ..jobstore.states import JobState
from ..problems import ProblemError
from ..schemas import (
    ArtifactList,
    ArtifactPublic,
    JobList,
    JobMetrics,
    JobPublic,
    JobStatus,
    MetricPointPublic,
)
from ..submission import collect_files, submit_job
from ..uploads import read_upload

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _not_found(job_id: str) -> ProblemError:
    return ProblemError(404, f"no job {job_id!r}", kind="not-found")


def _job_or_404(session, tenant_id: int, job_id: str) -> Job:
    job = crud.get_job(session, tenant_id, job_id)
    if job is None:
        raise _not_found(job_id)
    return job


def _job_response(job: Job, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # Serialise once with pydantic and hand back bytes: no second validation pass by FastAPI.
    body = JobPublic.model_validate(job).model_dump_json()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


# Registered first: routes are matched in order, and pollers hit this one most.
@router.get("/{job_id}", response_model=JobPublic, summary="A job's state, stage, progress and results")
async def get_job(job_id: str, tenant_id: TenantDep, settings: SettingsDep, cache: StatusCacheDep) -> Response:
    # Every poller and dashboard hits this: one primary-key lookup. On SQLite (WAL: readers never
    # wait for writers) it takes ~0.1 ms and runs inline, cheaper than a thread-pool hop; a
    # server database is a network round trip, so there it runs in the pool and many overlap.
    # The key check is cached (deps.KeyCache).
    # A burst of polls of one job within status_cache_seconds costs one query (api/status_cache.py).
    body = cache.get(tenant_id, job_id)
    if body is not None:
        return Response(body, media_type="application/json")
    engine = get_engine(settings.database_url)
    if engine.dialect.name == "sqlite":
        row = crud.job_row(engine, tenant_id, job_id)
    else:
        row = await run_in_threadpool(crud.job_row, engine, tenant_id, job_id)
    if row is None:
        raise _not_found(job_id)
    head = JobStatus.model_validate(row).model_dump_json().encode()
    body = b"".join((head[:-1], b',"spec":', row["spec"].encode(), b',"summary":',
                     (row["summary"] or "null").encode(), b"}"))
    cache.put(tenant_id, job_id, body)
    return Response(body, media_type="application/json")


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit a job (multipart: 'checkpoint' file, 'spec' JSON, optional .npz data parts)",
    responses={413: {"description": "upload too large"}, 422: {"description": "bad spec or checkpoint"}},
    # The body is parsed by api.uploads (streamed, size-limited); described here for clients.
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["checkpoint"],
        "properties": {
            "checkpoint": {"type": "string", "format": "binary",
                           "description": "state_dict (.pt/.pth/.th) or .safetensors"},
            "spec": {"type": "string", "description": "the job spec as JSON (api.jobstore.spec.JobSpec)"},
        },
        "additionalProperties": {"type": "string", "format": "binary", "description": "an .npz data part"},
    }}}}},
)
async def create_job(
    request: Request,
    settings: SettingsDep,
    tenant_id: TenantDep,
    store: StoreDep,
    dispatcher: DispatcherDep,
    http_metrics: MetricsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    upload = await read_upload(request, settings.max_upload_bytes, settings.max_upload_parts)
    try:
        def submit() -> tuple[Job, bool]:
            files = collect_files(upload, store)
            with get_sessionmaker(settings.database_url)() as session:
                return submit_job(session, store, settings, tenant_id, files, idempotency_key)

        job, created = await run_in_threadpool(submit)
    finally:
        await upload.close()
    if created:
        http_metrics.counters["jobs_submitted"] += 1
        await run_in_threadpool(dispatcher.publish, job.id, job.queue)
    headers = {"Location": f"/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _job_response(job, 202, headers)


@router.get("", response_model=JobList, summary="List jobs, newest first, with filters and a cursor")
def list_jobs(
    session: SessionDep,
    tenant_id: TenantDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    arch: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    try:
        cur = crud.Cursor.decode(cursor) if cursor else None
    except Exception:
        raise ProblemError(422, "cursor: not a cursor this API returned", kind="invalid-request") from None

    def aware(ts: datetime | None) -> datetime | None:
        return ts.replace(tzinfo=timezone.utc) if ts is not None and ts.tzinfo is None else ts

    jobs, nxt = crud.list_jobs(
        session, tenant_id, states=[s.value for s in state or ()], arch=arch, created_after=aware(created_after),
        created_before=aware(created_before), cursor=cur, limit=limit,
    )
    body = JobList(items=[JobPublic.model_validate(j) for j in jobs], next_cursor=nxt.encode() if nxt else None)
    return Response(body.model_dump_json(), media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobPublic, summary="Cancel (durable: stored in the DB)")
def cancel_job(job_id: str, session: SessionDep, tenant_id: TenantDep, cache: StatusCacheDep) -> Response:
    job = _job_or_404(session, tenant_id, job_id)
    if not crud.request_cancel(session, job):
        session.rollback()
        raise ProblemError(409, f"job {job_id} already {job.state}; nothing to cancel", kind="job-finished")
    session.commit()
    cache.drop(tenant_id, job_id)
    # A queued job is cancelled now (200); a running one stops within a few steps (202).
    return _job_response(job, 200 if job.state == JobState.cancelled.value else 202)


@router.post("/{job_id}/retry", status_code=202, response_model=JobPublic, summary="Re-run a failed or cancelled job")
def retry_job(
    job_id: str, session: SessionDep, tenant_id: TenantDep, cache: StatusCacheDep, dispatcher: DispatcherDep
) -> Response:
    job = _job_or_404(session, tenant_id, job_id)
    if not crud.retry_job(session, job):
        session.rollback()
        raise ProblemError(
            409, f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried", kind="not-retryable"
        )
    session.commit()
    cache.drop(tenant_id, job_id)
    dispatcher.publish(job.id, job.queue)
    return _job_response(job, 202, {"Location": f"/jobs/{job.id}"})


@router.delete(
    "/{job_id}", status_code=204, summary="Delete a queued or finished job with its artifacts",
    responses={409: {"description": "the job is running: cancel it first"}},
)
def delete_job(
    job_id: str, session: SessionDep, tenant_id: TenantDep, store: StoreDep, cache: StatusCacheDep
) -> Response:
    job = _job_or_404(session, tenant_id, job_id)
    if not crud.delete_job(session, job):
        session.rollback()
        raise ProblemError(409, f"job {job_id} is {job.state}; cancel it before deleting it", kind="job-running")
    session.commit()
    store.remove_job(job_id)
    cache.drop(tenant_id, job_id)
    return Response(status_code=204)


@router.get("/{job_id}/metrics", response_model=JobMetrics, summary="Loss curves (sampled)")
def job_metrics(
    job_id: str, session: SessionDep, tenant_id: TenantDep, max_points: Annotated[int, Query(ge=2, le=5000)] = 500
) -> JobMetrics:
    _job_or_404(session, tenant_id, job_id)
    points = crud.metric_points(session, job_id, max_points)
    return JobMetrics(job_id=job_id, points=[MetricPointPublic.model_validate(p) for p in points])


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="The job's result files")
def list_artifacts(job_id: str, session: SessionDep, tenant_id: TenantDep) -> ArtifactList:
    _job_or_404(session, tenant_id, job_id)
    return ArtifactList(items=[ArtifactPublic.model_validate(a) for a in crud.list_artifacts(session, job_id)])


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One 'bytes=a-b' range → inclusive (start, end); None = serve the whole file."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise ValueError
            return max(size - n, 0), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        raise ProblemError(
            416, f"range {header!r} is outside the file's {size} bytes", kind="range-not-satisfiable",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, min(end, size - 1)


def _file_chunks(path, start: int, length: int):
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            chunk = f.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)
            yield chunk


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download a result file (ETag = sha256, If-None-Match → 304, Range → 206)",
    response_class=Response,
)
def download_artifact(
    job_id: str, name: str, request: Request, session: SessionDep, tenant_id: TenantDep, store: StoreDep
) -> Response:
    _job_or_404(session, tenant_id, job_id)
    art = crud.get_artifact(session, job_id, name)
    if art is None:
        raise ProblemError(404, f"job {job_id} has no artifact {name!r}", kind="not-found")
    etag = f'"{art.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0"}
    inm = request.headers.get("if-none-match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        if "*" in tags or etag in tags:
            return Response(status_code=304, headers=headers)
    path = store.artifact_path(job_id, name)
    if not path.is_file():
        raise ProblemError(404, f"artifact {name!r} of job {job_id} is missing from the store", kind="not-found")
    size = art.size
    start, end, status = 0, size - 1, 200
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if rng and size > 0 and (if_range is None or if_range.strip() == etag):
        parsed = _parse_range(rng, size)
        if parsed is not None:
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return StreamingResponse(
        _file_chunks(path, start, end - start + 1), status_code=status, media_type=art.media_type, headers=headers
    )
