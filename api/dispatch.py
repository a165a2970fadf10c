"""Sending jobs to the workers, and the sweeper that keeps the queue honest.

The Celery message carries only the job id. If sending fails (broker down) the job stays
`queued` with no `published_at`, and the sweeper sends it later. The sweeper also re-queues
running jobs whose lease lapsed (their worker died) or whose step stopped advancing (watchdog)
— or fails them after `max_attempts` — and sends again queued jobs whose message went out more
than `republish_seconds` ago without a worker claiming them (a broker that lost its queue).
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from .jobstore import crud
from .jobstore.artifacts import ArtifactStore
from .jobstore.db import session_scope
from .jobstore.models import Job
from .jobstore.settings import Settings

log = logging.getLogger("nern.api")


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import TASK_RUN_JOB, make_celery

        self.settings = settings
        self.task_name = TASK_RUN_JOB
        self.celery: Celery = make_celery(settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, job_id: str, queue: str) -> bool:
        """Send the job's message and record it; False (job left for the sweeper) on failure."""
        try:
            self.celery.send_task(self.task_name, args=[job_id], queue=queue, retry=False)
        except Exception as e:
            log.warning("could not send job %s to the broker (%s); will retry", job_id, e)
            return False
        with session_scope(self.settings.database_url) as session:
            crud.mark_published(session, job_id)
        return True

    def sweep(self) -> None:
        with session_scope(self.settings.database_url) as session:
            changed = crud.expire_leases(session, self.settings.stall_seconds)
        if changed:
            log.info("lease sweep changed %d job(s)", changed)
        within = self.worker_window
        with session_scope(self.settings.database_url) as session:
            crud.mark_waiting(session, crud.queue_workers(session, within), within)
        if self.settings.retention_days > 0:
            self.remove_expired()
        with session_scope(self.settings.database_url) as session:
            pending = crud.unpublished_jobs(session, self.settings.republish_seconds)
        for job_id, queue in pending:
            self.publish(job_id, queue)

    @property
    def worker_window(self) -> float:
        """A worker unseen this long is taken for gone (it renews every heartbeat)."""
        return max(3 * self.settings.heartbeat_seconds, self.settings.lease_seconds)

    def remove_expired(self) -> int:
        """Delete finished jobs past NERN_RETENTION_DAYS: the row first, then the files."""
        store = ArtifactStore(self.settings.artifact_root)
        removed = 0
        with session_scope(self.settings.database_url) as session:
            ids = crud.finished_before(session, self.settings.retention_days)
        for job_id in ids:
            with session_scope(self.settings.database_url) as session:
                job = session.get(Job, job_id)
                if job is None or not crud.delete_job(session, job):
                    continue
            store.remove_job(job_id)
            removed += 1
        if removed:
            log.info("retention: removed %d finished job(s)", removed)
        return removed

    def ping_broker(self) -> None:
        with self.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nern-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.sweep_seconds):
            try:
                self.sweep()
            except Exception:
                log.exception("lease sweep failed")
