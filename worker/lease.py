"""A worker's hold on a job: heartbeats that renew the DB lease and pick up cancel requests.

The lease is renewed every `heartbeat_seconds` from a background thread. If the row says the
job is no longer ours (the lease lapsed and another worker took it) or a cancel was
requested, `should_stop()` turns True and nern.train.fit stops at its next step.

A database blip or failover (connections dropped, a restart) never fails a job: progress
writes and the final result are retried with backoff (`retrying`) for `db_retry_seconds`; only
a lost lease stops the worker. The worker being stopped (SIGTERM, `draining`) also stops the
job at its next step, and the task hands it back without using up an attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from api.jobstore import crud
from api.jobstore.db import session_scope
from api.jobstore.settings import Settings
from api.jobstore.states import Stage

from .celery_app import draining

log = logging.getLogger("nern.worker")
T = TypeVar("T")


def retrying(settings: Settings, what: str, fn: Callable[[], T]) -> T:
    """Run a database write, retrying connection errors with backoff for `db_retry_seconds`."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    deadline = time.monotonic() + settings.db_retry_seconds
    delay = 0.1
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError, DBAPIError) as e:
            if not (isinstance(e, OperationalError | InterfaceError) or e.connection_invalidated):
                raise
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, type(e.orig).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    def __init__(self, settings: Settings, job_id: str, owner: str, attempt: int) -> None:
        self.settings = settings
        self.job_id = job_id
        self.owner = owner
        self.attempt = attempt
        self.lost = False
        self.cancel_requested = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id[:8]}", daemon=True)
        self._last_progress = 0.0
        self._last_stage: Stage | None = None

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def should_stop(self) -> bool:
        return self.lost or self.cancel_requested or draining.is_set()

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope(self.settings.database_url) as session:
                    ours, cancel = crud.renew_lease(session, self.job_id, self.owner, self.settings.lease_seconds)
            except Exception as e:  # a DB hiccup: keep trying until the lease really lapses
                log.warning("heartbeat for job %s failed: %s", self.job_id, e)
                continue
            self._update(ours, cancel)

    def _update(self, ours: bool, cancel: bool) -> None:
        if not ours and not self.lost:
            log.warning("lost the lease on job %s; stopping", self.job_id)
        self.lost = self.lost or not ours
        self.cancel_requested = self.cancel_requested or cancel

    def report(
        self,
        stage: Stage,
        *,
        step: int = 0,
        total_steps: int = 0,
        eta_seconds: float | None = None,
        losses: dict[str, float] | None = None,
        lr: float | None = None,
        elapsed_s: float = 0.0,
    ) -> None:
        """Write progress (throttled to `progress_seconds`, always on a stage change)."""
        now = time.monotonic()
        last = total_steps > 0 and step >= total_steps
        if stage == self._last_stage and not last and now - self._last_progress < self.settings.progress_seconds:
            return
        self._last_stage, self._last_progress = stage, now

        def write() -> tuple[bool, bool]:
            with session_scope(self.settings.database_url) as session:
                ours = crud.record_progress(
                    session, self.job_id, self.owner, attempt=self.attempt, stage=stage, step=step,
                    total_steps=total_steps, eta_seconds=eta_seconds, losses=losses, lr=lr, elapsed_s=elapsed_s,
                )
                return ours, ours and crud.cancel_requested(session, self.job_id)

        # Past db_retry_seconds the database is really gone: the lease lapses meanwhile and the
        # job is someone else's to resume, so stop as for a lost lease, not as a failure.
        try:
            ours, cancel = retrying(self.settings, f"progress of job {self.job_id}", write)
        except Exception as e:
            log.warning("progress of job %s could not be written (%s); giving the job up", self.job_id, e)
            ours, cancel = False, False
        self._update(ours, cancel)
