"""Webhook delivery: the URL policy and the sender thread of the API process.

The sender drains the `job_events` outbox (written with each terminal state change, see
`api.jobstore.webhooks`): every event becomes one delivery per subscribed hook, posted with

    X-Nern-Event: job.succeeded
    X-Nern-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the hook's secret>
    X-Nern-Delivery: <delivery id>

and the body {"event": ..., "job": <the object GET /jobs/{id} returns>}. A non-2xx answer or a
transport error is retried after backoff_seconds · 2^(n-1), up to max_attempts; every attempt is
recorded. The sender runs beside the request handlers, so a slow receiver never holds up a job.

URLs must be http(s) and resolve only to public addresses: loopback, private, link-local,
CGNAT, multicast and reserved ranges are refused unless NERN_WEBHOOK_ALLOW_PRIVATE=1; cloud
metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200) always. The check runs when
a hook is created and again before every attempt (DNS may have changed); redirects are never
followed. (A name that changes its answer between the check and the connect is not caught.)
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from .jobstore import webhooks
from .jobstore.db import session_scope
from .jobstore.models import Job
from .jobstore.settings import Settings
from .schemas import JobPublic

log = logging.getLogger("nern.api.webhooks")

# Cloud metadata services (AWS/GCP/Azure, AWS IPv6, Alibaba): refused even when private ones are allowed.
_METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}


class WebhookUrlError(ValueError):
    pass


def check_url(url: str, allow_private: bool) -> None:
    """Raise WebhookUrlError unless `url` is http(s) and every address its host resolves to is
    allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlError("the URL must start with http:// or https://")
    if not parts.hostname:
        raise WebhookUrlError("the URL has no host")
    if parts.username or parts.password:
        raise WebhookUrlError("the URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookUrlError("the URL's port is not a number in 1-65535") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise WebhookUrlError(f"the host {parts.hostname!r} does not resolve") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr in _METADATA or (not allow_private and not addr.is_global) or addr.is_multicast:
            raise WebhookUrlError(
                f"the host {parts.hostname!r} resolves to {addr}, a loopback, private, link-local or "
                "metadata address; webhooks go to public addresses only (NERN_WEBHOOK_ALLOW_PRIVATE=1 "
                "lifts this for private networks, never for metadata)"
            )


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def job_document(job: Job) -> dict:
    return JobPublic.model_validate(job).model_dump(mode="json")


class WebhookSender:
    """A daemon thread of the API process that fans out events and posts deliveries."""

    def __init__(self, settings: Settings, interval: float = 0.5) -> None:
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nern-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_seconds + 2)

    def _run(self) -> None:
        with httpx.Client(timeout=self.settings.webhook_timeout_seconds, follow_redirects=False,
                          trust_env=False) as client:
            last_prune = 0.0
            while not self._stop.wait(self.interval):
                try:
                    self.fan_out()
                    self.send_due(client)
                    if time.monotonic() - last_prune > 3600:
                        last_prune = time.monotonic()
                        with session_scope(self.settings.database_url) as session:
                            webhooks.prune(session)
                except Exception:
                    log.exception("webhook sender pass failed")

    def fan_out(self) -> int:
        made = 0
        with session_scope(self.settings.database_url) as session:
            events = webhooks.pending_events(session)
        for ev in events:
            with session_scope(self.settings.database_url) as session:
                job = session.get(Job, ev.job_id)
                doc = job_document(job) if job is not None else {"id": ev.job_id}
                body = json.dumps({"event": ev.event, "job": doc}, separators=(",", ":"))
                made += webhooks.fan_out(session, ev, {ev.event: body})
        return made

    def send_due(self, client: httpx.Client) -> int:
        lease = self.settings.webhook_timeout_seconds * 2 + 5
        with session_scope(self.settings.database_url) as session:
            due = [(d.id, d.event, d.job_id, d.body, len(d.attempts), h.url, h.secret)
                   for d, h in webhooks.claim_due(session, lease)]
        for d_id, event, job_id, body, tried, url, secret in due:
            attempt, ok = self._post(client, d_id, event, body.encode(), url, secret)
            n = tried + 1
            retry_in = None if ok or n >= self.settings.webhook_max_attempts else \
                self.settings.webhook_backoff_seconds * 2 ** (n - 1)
            with session_scope(self.settings.database_url) as session:
                webhooks.record_attempt(session, d_id, attempt, ok=ok, retry_in=retry_in)
            log.info("webhook %s for job %s: attempt %d %s", event, job_id, n,
                     "delivered" if ok else f"failed ({attempt.get('error') or attempt.get('status_code')})",
                     extra={"job_id": job_id, "delivery_id": d_id})
        return len(due)

    def _post(self, client: httpx.Client, d_id: str, event: str, body: bytes, url: str,
              secret: str) -> tuple[dict, bool]:
        from .jobstore.crud import utcnow

        attempt: dict = {"at": utcnow().isoformat(), "status_code": None, "error": None, "duration_ms": None}
        t0 = time.perf_counter()
        try:
            check_url(url, self.settings.webhook_allow_private)
            r = client.post(url, content=body, headers={
                "Content-Type": "application/json", "User-Agent": "nern-webhooks/1",
                "X-Nern-Event": event, "X-Nern-Delivery": d_id, "X-Nern-Signature": sign(secret, body),
            })
            attempt["status_code"] = r.status_code
            ok = 200 <= r.status_code < 300
        except WebhookUrlError as e:
            attempt["error"] = f"refused: {e}"
            ok = False
        except httpx.HTTPError as e:
            attempt["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            ok = False
        attempt["duration_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return attempt, ok
