"""`spec.time_limit_s` on the job store itself (no processes), on SQLite and PostgreSQL: the
sweeper fails a job that has run longer than its limit since its first start, once, and leaves
alone jobs within their limit, jobs without one and jobs that never started."""

from __future__ import annotations

from datetime import datetime, timedelta

from jobstores import insert_job
from sqlalchemy import select

from api.jobstore import crud, webhooks
from api.jobstore.db import session_scope
from api.jobstore.models import Job
from api.jobstore.states import JobState

OWNER = "host:1:aaaa"
TIME_LIMIT_ERROR = "the job ran past its time limit of 5 s (spec.time_limit_s)"


def _db_now(url: str) -> datetime:
    with session_scope(url) as s:
        return crud.db_now(s)


def _running(url: str, started_ago_s: float, time_limit_s: float | None) -> str:
    """A running job of OWNER, started `started_ago_s` ago, with a live lease and a fresh step."""
    now = _db_now(url)
    job_id, _ = insert_job(url, state="running", stage="training", attempts=1, lease_owner=OWNER,
                           lease_expires_at=now + timedelta(seconds=60), heartbeat_at=now, step_at=now,
                           started_at=now - timedelta(seconds=started_ago_s), time_limit_s=time_limit_s)
    return job_id


def _row(url: str, job_id: str) -> Job:
    with session_scope(url) as s:
        return s.get(Job, job_id)


def _events(url: str) -> list[tuple[str, str]]:
    with session_scope(url) as s:
        return [(e.job_id, e.event) for e in s.scalars(select(webhooks.JobEvent).order_by(webhooks.JobEvent.id))]


def test_running_job_past_its_limit_is_failed_once_and_its_worker_can_change_nothing(store_url):
    over = _running(store_url, started_ago_s=10, time_limit_s=5)
    within = _running(store_url, started_ago_s=1, time_limit_s=60)
    unlimited = _running(store_url, started_ago_s=86_400, time_limit_s=None)

    with session_scope(store_url) as s:
        assert crud.expire_leases(s) == 1
    with session_scope(store_url) as s:  # a second sweep finds nothing more to do
        assert crud.expire_leases(s) == 0

    job = _row(store_url, over)
    assert (job.state, job.error, job.lease_owner) == ("failed", TIME_LIMIT_ERROR, None)
    assert job.finished_at is not None and job.attempts == 1
    for untouched in (within, unlimited):
        job = _row(store_url, untouched)
        assert (job.state, job.error, job.lease_owner, job.finished_at) == ("running", None, OWNER, None)

    # The worker still training `over` learns at its next heartbeat that the job is no longer
    # its own, and none of its writes can move the job out of `failed`.
    with session_scope(store_url) as s:
        assert crud.renew_lease(s, over, OWNER, 60) == (False, False)
        assert not crud.record_progress(s, over, OWNER, attempt=1, stage="training", step=7, total_steps=10)
        assert not crud.finish_job(s, over, OWNER, summary={}, artifacts=[("report.json", 2, "0" * 64, "x")],
                                   resumed_from_step=None)
        assert not crud.end_job(s, over, OWNER, JobState.cancelled)
        assert crud.claim_job(s, over, "host:2:bbbb", 60) is None
    job = _row(store_url, over)
    assert (job.state, job.error, job.step) == ("failed", TIME_LIMIT_ERROR, 0)
    with session_scope(store_url) as s:
        assert crud.list_artifacts(s, over) == []
    assert _events(store_url) == [(over, "job.failed")]  # exactly one terminal state change


def test_limit_counts_from_the_first_start_over_all_attempts(store_url):
    now = _db_now(store_url)
    # Submitted a day ago but never started (no worker yet): waiting does not count.
    never_started, _ = insert_job(store_url, time_limit_s=5, created_at=now - timedelta(days=1))
    # Started 10 s ago, then its worker died and the job went back to the queue: it counts.
    requeued, _ = insert_job(store_url, time_limit_s=5, attempts=1, started_at=now - timedelta(seconds=10))

    with session_scope(store_url) as s:
        assert crud.expire_leases(s) == 1
    assert (_row(store_url, requeued).state, _row(store_url, requeued).error) == ("failed", TIME_LIMIT_ERROR)
    job = _row(store_url, never_started)
    assert (job.state, job.error, job.started_at) == ("queued", None, None)

    # Its first claim starts the clock; the job runs on until the limit passes.
    with session_scope(store_url) as s:
        claimed = crud.claim_job(s, never_started, OWNER, 60)
        assert claimed is not None and claimed.started_at is not None
    with session_scope(store_url) as s:
        assert crud.expire_leases(s) == 0
    assert _row(store_url, never_started).state == "running"
    assert _events(store_url) == [(requeued, "job.failed")]
