"""Prometheus text exposition for `/metrics`: HTTP request counts and latencies, job gauges.

A pure ASGI middleware records each request under its route template (not the raw path, so
job ids do not explode the label set). No client library: the text format is a few lines.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .jobstore.states import JobState

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HttpMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        # (method, route) -> [per-bucket counts..., +Inf count, sum]
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.counters: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        h = self.latency.get((method, route))
        if h is None:
            h = self.latency[(method, route)] = [0.0] * (len(BUCKETS) + 2)
        h[bisect_left(BUCKETS, seconds)] += 1
        h[-1] += seconds

    def render(self, jobs_by_state: dict[str, int], workers: dict[str, int] | None = None,
               queued: dict[str, int] | None = None) -> str:
        out = [
            "# HELP nern_http_requests_total HTTP requests by method, route template and status.",
            "# TYPE nern_http_requests_total counter",
        ]
        for (m, r, s), n in sorted(self.requests.items()):
            out.append(f'nern_http_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
        out += [
            "# HELP nern_http_request_duration_seconds Time to the end of the response.",
            "# TYPE nern_http_request_duration_seconds histogram",
        ]
        for (m, r), h in sorted(self.latency.items()):
            cum = 0.0
            for le, n in zip((*BUCKETS, "+Inf"), h[:-1], strict=True):
                cum += n
                out.append(f'nern_http_request_duration_seconds_bucket{{method="{m}",route="{r}",le="{le}"}} {int(cum)}')
            out.append(f'nern_http_request_duration_seconds_sum{{method="{m}",route="{r}"}} {h[-1]:.6f}')
            out.append(f'nern_http_request_duration_seconds_count{{method="{m}",route="{r}"}} {int(cum)}')
        out += ["# HELP nern_jobs Jobs in the database by state.", "# TYPE nern_jobs gauge"]
        for state in JobState:
            out.append(f'nern_jobs{{state="{state.value}"}} {jobs_by_state.get(state.value, 0)}')
        workers, queued = workers or {}, queued or {}
        queues = sorted({"cpu", "gpu", *workers, *queued})
        out += ["# HELP nern_queue_workers Live workers serving each queue.", "# TYPE nern_queue_workers gauge"]
        out += [f'nern_queue_workers{{queue="{q}"}} {workers.get(q, 0)}' for q in queues]
        out += ["# HELP nern_jobs_unservable Queued jobs whose queue no live worker serves.",
                "# TYPE nern_jobs_unservable gauge"]
        out += [f'nern_jobs_unservable{{queue="{q}"}} {0 if workers.get(q) else queued.get(q, 0)}' for q in queues]
        for name, n in sorted(self.counters.items()):
            out += [f"# TYPE nern_{name}_total counter", f"nern_{name}_total {n}"]
        return "\n".join(out) + "\n"


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

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - start)
