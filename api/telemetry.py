"""`/metrics` through prometheus-client, with label values from fixed sets only.

Per API process (a pure ASGI middleware):
    nern_http_requests_total{method, route, status}         counter
    nern_http_request_duration_seconds{method, route}       histogram
    nern_upload_bytes_total                                  counter: request bytes received by POST /jobs
    nern_jobs_submitted_total                                counter
`method` is one of GET HEAD POST PUT PATCH DELETE OPTIONS, anything else "other"; `route` is the
route template ("/jobs/{job_id}"), or "unmatched" — so a client cannot add series.

From the database at scrape time (the same in every API process: scrape one, or de-duplicate):
    nern_jobs{state}, nern_queue_jobs{queue, state}          gauges
    nern_job_queue_wait_seconds                              histogram: created → first started
    nern_job_run_seconds{state}                              histogram: started → finished
    nern_training_steps_per_second{queue}                    gauge: sum over running jobs
    nern_worker_jobs_running{worker}, nern_worker_jobs_total{worker}
    nern_worker_last_heartbeat_timestamp_seconds{worker}, nern_worker_gpu_memory_bytes{worker}
Workers are pool processes (host:pid) that beat within the last hour.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Float, and_, case, cast, func, literal, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .jobstore import crud, workers
from .jobstore.db import session_scope
from .jobstore.models import Job, MetricPoint
from .jobstore.states import JobState

log = logging.getLogger("nern.api")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATES = tuple(s.value for s in JobState)
QUEUES = ("cpu", "gpu")
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


class HttpMetrics:
    """The process's registry: HTTP series, and the job store's collector when built by `for_database`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("nern_http_requests", "HTTP requests by method, route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("nern_http_request_duration_seconds", "Time to the end of the response.",
                                 ["method", "route"], buckets=HTTP_BUCKETS, registry=self.registry)
        self.upload_bytes = Counter("nern_upload_bytes", "Request body bytes received by POST /jobs.",
                                    registry=self.registry)
        # Named counters the routes bump (`counters["jobs_submitted"] += 1`), exported as nern_<name>_total.
        self.counters: dict[str, int] = defaultdict(int)
        self.registry.register(_NamedCounters(self.counters))

    @classmethod
    def for_database(cls, database_url: str, worker_window: float = 60.0) -> HttpMetrics:
        """HTTP series plus the job store's collector (jobs, queue wait, run time, workers)."""
        metrics = cls()
        metrics.registry.register(JobStoreCollector(database_url, worker_window))
        return metrics

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _NamedCounters(Collector):
    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, n in sorted(self.counters.items()):
            yield CounterMetricFamily(f"nern_{name}", f"{name.replace('_', ' ')} (this process)", value=n)


def _seconds_between(session: Session, later, earlier):
    """SQL for `later - earlier` in seconds on SQLite and PostgreSQL."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(later) - func.julianday(earlier)) * 86400.0
    return func.extract("epoch", later - earlier)


def _histogram(session: Session, seconds, where, group_by=None) -> dict[tuple, tuple[list[float], float]]:
    """Cumulative bucket counts and sum of `seconds` over rows matching `where`, per group."""
    cols = [func.sum(case((seconds <= le, 1), else_=0)) for le in JOB_BUCKETS]
    cols += [func.count(), func.coalesce(func.sum(cast(seconds, Float)), literal(0.0))]
    q = select(*([group_by] if group_by is not None else []), *cols).where(where)
    if group_by is not None:
        q = q.group_by(group_by)
    out = {}
    for row in session.execute(q).all():
        key = (row[0],) if group_by is not None else ()
        vals = list(row[1:] if group_by is not None else row)
        counts = [float(v or 0) for v in vals[: len(JOB_BUCKETS) + 1]]
        out[key] = (counts, float(vals[-1] or 0.0))
    return out


def _histogram_family(name: str, doc: str, labels: list[str], data: dict[tuple, tuple[list[float], float]],
                      ) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, (counts, total) in sorted(data.items(), key=lambda kv: str(kv[0])):
        buckets = [(str(float(le)), c) for le, c in zip(JOB_BUCKETS, counts[:-1])] + [("+Inf", counts[-1])]
        fam.add_metric([str(k) for k in key], buckets, total)
    return fam


class JobStoreCollector(Collector):
    """Job and worker series read from the database at scrape time."""

    def __init__(self, database_url: str, worker_window: float = 60.0) -> None:
        self.database_url = database_url
        self.worker_window = worker_window  # a worker silent this long counts as gone

    def describe(self) -> list:
        return []  # no DB access at registration

    def collect(self) -> Iterator:
        try:
            with session_scope(self.database_url) as session:
                yield from self._collect(session)
        except Exception as e:  # a scrape must not fail the whole exposition
            log.warning("job store metrics unavailable: %s", e)
            yield GaugeMetricFamily("nern_jobstore_up", "1 when the job store answered this scrape.", value=0)

    def _collect(self, session: Session) -> Iterator:
        yield GaugeMetricFamily("nern_jobstore_up", "1 when the job store answered this scrape.", value=1)
        counts = dict(((q, s), n) for q, s, n in session.execute(
            select(Job.queue, Job.state, func.count()).group_by(Job.queue, Job.state)).all())
        yield from _job_count_families(counts)
        yield from _duration_families(session)
        yield _training_rate_family(session)
        yield from _worker_families(session)
        yield from _queue_service_families(session, counts, self.worker_window)


def _job_count_families(counts: dict[tuple[str, str], int]) -> Iterator:
    """Jobs by state, and by queue and state."""
    by_state = GaugeMetricFamily("nern_jobs", "Jobs in the database by state.", labels=["state"])
    by_queue = GaugeMetricFamily("nern_queue_jobs", "Jobs by queue and state.", labels=["queue", "state"])
    for s in STATES:
        by_state.add_metric([s], sum(n for (_, st), n in counts.items() if st == s))
        for q in QUEUES:
            by_queue.add_metric([q, s], counts.get((q, s), 0))
    yield by_state
    yield by_queue


def _duration_families(session: Session) -> Iterator:
    """Histograms of the queue wait and of the run time by final state."""
    wait = _seconds_between(session, Job.started_at, Job.created_at)
    yield _histogram_family("nern_job_queue_wait_seconds", "Seconds from submission to the first start.", [],
                            _histogram(session, wait, Job.started_at.is_not(None)))
    run = _seconds_between(session, Job.finished_at, Job.started_at)
    done = and_(Job.finished_at.is_not(None), Job.started_at.is_not(None))
    yield _histogram_family("nern_job_run_seconds", "Seconds from the first start to the end, by final state.",
                            ["state"], _histogram(session, run, done, Job.state))


def _training_rate_family(session: Session) -> GaugeMetricFamily:
    """Training rate of each running job: its latest training point's step / training seconds."""
    latest = (select(func.max(MetricPoint.id)).join(Job, Job.id == MetricPoint.job_id)
              .where(Job.state == JobState.running.value, MetricPoint.stage == "training")
              .group_by(MetricPoint.job_id))
    rate = GaugeMetricFamily("nern_training_steps_per_second",
                             "Training steps per second, summed over running jobs.", labels=["queue"])
    per_queue = dict.fromkeys(QUEUES, 0.0)
    for queue, step, elapsed in session.execute(
        select(Job.queue, MetricPoint.step, MetricPoint.elapsed_s).join(Job, Job.id == MetricPoint.job_id)
        .where(MetricPoint.id.in_(latest))
    ).all():
        if elapsed and elapsed > 0:
            per_queue[queue] = per_queue.get(queue, 0.0) + step / elapsed
    for q, v in per_queue.items():
        rate.add_metric([q], v)
    return rate


def _worker_families(session: Session) -> Iterator:
    """Each live worker process: last heartbeat, jobs claimed, jobs running, CUDA memory."""
    running: dict[str, int] = defaultdict(int)
    for (owner,) in session.execute(select(Job.lease_owner).where(Job.state == JobState.running.value,
                                                                  Job.lease_owner.is_not(None))):
        running[owner.rsplit(":", 1)[0]] += 1
    alive = workers.recent(session)
    beat = GaugeMetricFamily("nern_worker_last_heartbeat_timestamp_seconds",
                             "Unix time of each worker process's last heartbeat.", labels=["worker"])
    total = CounterMetricFamily("nern_worker_jobs", "Jobs each worker process has claimed.", labels=["worker"])
    busy = GaugeMetricFamily("nern_worker_jobs_running", "Jobs each worker process runs now.", labels=["worker"])
    gpu = GaugeMetricFamily("nern_worker_gpu_memory_bytes", "CUDA memory held by each worker process.",
                            labels=["worker"])
    for w in alive:
        beat.add_metric([w.name], w.heartbeat_at.timestamp())
        total.add_metric([w.name], w.jobs_total)
        busy.add_metric([w.name], running.get(w.name, 0))
        if w.gpu_memory_bytes is not None:
            gpu.add_metric([w.name], w.gpu_memory_bytes)
    yield from (beat, total, busy, gpu)


def _queue_service_families(session: Session, counts: dict[tuple[str, str], int], worker_window: float) -> Iterator:
    """Live workers per queue, and queued jobs of queues no live worker serves: they wait for
    nothing (waiting_reason on the job)."""
    live = crud.queue_workers(session, worker_window)
    serving = GaugeMetricFamily("nern_queue_workers", "Live worker processes serving each queue.",
                                labels=["queue"])
    stuck = GaugeMetricFamily("nern_jobs_unservable", "Queued jobs whose queue no live worker serves.",
                              labels=["queue"])
    for q in sorted({*QUEUES, *live}):
        serving.add_metric([q], live.get(q, 0))
        stuck.add_metric([q], 0 if live.get(q) else counts.get((q, JobState.queued.value), 0))
    yield serving
    yield stuck


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        counting = scope["method"] == "POST" and scope["path"] == "/jobs"

        async def receive_counting() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.metrics.upload_bytes.inc(len(message.get("body", b"")))
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_counting if counting else receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - start)
