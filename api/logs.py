"""JSON logs for the API and the workers (python-json-logger): one object per line with
`timestamp`, `level`, `logger`, `message`, and `request_id` / `job_id` whenever the line was
written while serving a request or running a job (context variables, so threads and tasks
each carry their own).

    {"timestamp": "...", "level": "INFO", "logger": "nern.api.access", "message": "GET /jobs/{job_id} 200",
     "request_id": "4f1c...", "job_id": "9a0e...", "method": "GET", "route": "/jobs/{job_id}", ...}

NERN_LOG_FORMAT=text switches to plain lines (same fields appended) for a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker imports this module too: no web framework at run time
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("nern_request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("nern_job_id", default=None)

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ContextFilter(logging.Filter):
    """Adds the current request and job ids to every record (unless the call passed its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr, var in (("request_id", request_id_var), ("job_id", job_id_var)):
            if getattr(record, attr, None) is None:
                value = var.get()
                if value is not None:
                    setattr(record, attr, value)
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{k}={getattr(record, k)}" for k in ("request_id", "job_id") if getattr(record, k, None)]
        return line + (" [" + " ".join(ids) + "]" if ids else "")


def configure(level: int | str = logging.INFO) -> None:
    """Send every logger's records (ours, uvicorn's, Celery's) to stderr, one JSON object a line."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("NERN_LOG_FORMAT", "json").lower() == "text":
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        ))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


class RequestIdMiddleware:
    """X-Request-ID: the client's (if it is a sane token) or a new one; echoed in the response,
    set for the request's log lines, and one access line per request with route and job id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger("nern.api.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1").strip()
        rid = sent if _CLIENT_ID.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            extra = {"method": scope["method"][:16], "route": route, "status": status}
            job_id = (scope.get("path_params") or {}).get("job_id")
            if job_id is not None:
                extra["job_id"] = job_id
            self.log.info("%s %s %d", extra["method"], route, status, extra=extra)
            request_id_var.reset(token)
