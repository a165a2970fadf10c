"""Worker and API clocks may differ: lease decisions use the database's clock. On PostgreSQL,
with this process's clock set hours off, every decision still comes out as the server's clock
says: leases, heartbeats and the watchdog, time limits, re-sending lost messages, live workers,
webhook delivery leases, retention."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from jobstores import insert_job
from sqlalchemy import func, update

from api.jobstore import crud, webhooks, workers
from api.jobstore.crud import clock
from api.jobstore.db import session_scope
from api.jobstore.models import Job
from api.jobstore.states import JobState

pytestmark = pytest.mark.postgres

AHEAD, BEHIND = timedelta(hours=3), -timedelta(hours=3)
A, B = "host-a:1:aaaa", "host-b:2:bbbb"


@pytest.fixture
def process_clock(monkeypatch) -> Callable[[timedelta], None]:
    """Sets how far this process's clock is off: every module's `utcnow` (each `from .clock
    import utcnow` binds a name of its own, so each is replaced)."""
    real = clock.utcnow
    offset = [timedelta(0)]

    def skewed() -> datetime:
        return real() + offset[0]

    sites = [m for name, m in list(sys.modules.items())
             if name.split(".")[0] in ("api", "worker") and getattr(m, "utcnow", None) is real]
    assert {"api.jobstore.crud", "api.jobstore.crud.clock"} <= {m.__name__ for m in sites}
    for m in sites:
        monkeypatch.setattr(m, "utcnow", skewed)
    return lambda delta: offset.__setitem__(0, delta)


def _db_now(url: str) -> datetime:
    with session_scope(url) as s:
        return crud.db_now(s)


def _row(url: str, job_id: str) -> Job:
    with session_scope(url) as s:
        return s.get(Job, job_id)


def _assert_db_time(at: datetime | None, url: str, plus_s: float = 0.0) -> None:
    """`at` is the database's time now (plus `plus_s`), not this process's."""
    assert at is not None
    assert abs((at - _db_now(url)).total_seconds() - plus_s) < 10, (at, _db_now(url))


def test_the_clock_is_really_off_for_the_process_and_not_for_the_database(pg_url, process_clock):
    process_clock(AHEAD)
    assert abs((crud.utcnow() - datetime.now(timezone.utc)) - AHEAD) < timedelta(seconds=5)
    assert abs(_db_now(pg_url) - datetime.now(timezone.utc)) < timedelta(seconds=60)


def test_live_lease_is_not_taken_when_the_process_clock_runs_ahead(pg_url, process_clock):
    process_clock(AHEAD)
    job_id, _ = insert_job(pg_url, time_limit_s=3600)  # a process-clock sweep would find it 2 h over
    with session_scope(pg_url) as s:
        assert crud.claim_job(s, job_id, A, 30) is not None
    job = _row(pg_url, job_id)
    _assert_db_time(job.lease_expires_at, pg_url, plus_s=30)
    for at in (job.heartbeat_at, job.step_at, job.started_at):
        _assert_db_time(at, pg_url)

    with session_scope(pg_url) as s:
        assert crud.expire_leases(s, stall_seconds=60) == 0  # not lapsed, not stalled, within its limit
    with session_scope(pg_url) as s:
        assert crud.claim_job(s, job_id, B, 30) is None
    with session_scope(pg_url) as s:
        assert crud.renew_lease(s, job_id, A, 30) == (True, False)
        assert crud.record_progress(s, job_id, A, attempt=1, stage="training", step=1, total_steps=10)
    job = _row(pg_url, job_id)
    assert (job.state, job.lease_owner, job.attempts, job.error) == ("running", A, 1, None)
    _assert_db_time(job.lease_expires_at, pg_url, plus_s=30)


def test_lapsed_lease_is_reclaimed_when_the_process_clock_runs_behind(pg_url, process_clock):
    process_clock(BEHIND)
    lapsed, stalled, over_limit, claimable = (insert_job(pg_url)[0] for _ in range(4))
    with session_scope(pg_url) as s:  # written in the database's own time
        now = func.now()
        running = {"state": "running", "attempts": 1, "lease_owner": A, "heartbeat_at": now, "step_at": now,
                   "started_at": now, "lease_expires_at": now + timedelta(seconds=60)}
        s.execute(update(Job).values(**running))
        s.execute(update(Job).where(Job.id.in_([lapsed, claimable]))
                  .values(lease_expires_at=now - timedelta(seconds=5)))
        s.execute(update(Job).where(Job.id == stalled).values(step_at=now - timedelta(seconds=120)))
        s.execute(update(Job).where(Job.id == over_limit)
                  .values(time_limit_s=5, started_at=now - timedelta(seconds=10)))

    with session_scope(pg_url) as s:  # a worker takes over a lapsed lease directly
        assert crud.claim_job(s, claimable, B, 30) is not None
    with session_scope(pg_url) as s:
        assert crud.expire_leases(s, stall_seconds=60) == 3
    states = {j: (_row(pg_url, j).state, _row(pg_url, j).lease_owner) for j in (lapsed, stalled, over_limit, claimable)}
    assert states == {lapsed: ("queued", None), stalled: ("queued", None), over_limit: ("failed", None),
                      claimable: ("running", B)}
    assert "time limit" in _row(pg_url, over_limit).error
    with session_scope(pg_url) as s:
        assert crud.claim_job(s, lapsed, B, 30) is not None


@pytest.mark.parametrize("offset", [AHEAD, BEHIND], ids=["ahead", "behind"])
def test_lost_message_is_sent_again_by_the_database_clock(pg_url, process_clock, offset):
    process_clock(offset)
    job_id, _ = insert_job(pg_url)
    with session_scope(pg_url) as s:
        crud.mark_published(s, job_id)
    with session_scope(pg_url) as s:  # sent just now: not yet taken for lost
        assert crud.unpublished_jobs(s, republish_seconds=60) == []
    time.sleep(0.3)
    with session_scope(pg_url) as s:  # unclaimed for longer than republish_seconds: sent again
        assert crud.unpublished_jobs(s, republish_seconds=0.2) == [(job_id, "cpu")]
    _assert_db_time(_row(pg_url, job_id).published_at, pg_url, plus_s=-0.3)


@pytest.mark.parametrize("offset", [AHEAD, BEHIND], ids=["ahead", "behind"])
def test_worker_liveness_is_judged_by_the_database_clock(pg_url, process_clock, offset):
    process_clock(offset)
    with session_scope(pg_url) as s:
        workers.beat(s, "host-a:1", "host-a", "cpu", None)
    with session_scope(pg_url) as s:
        assert crud.queue_workers(s, within_seconds=6) == {"cpu": 1}
        assert [w.name for w in workers.recent(s)] == ["host-a:1"]
    time.sleep(0.3)
    with session_scope(pg_url) as s:  # silent for longer than the window: gone
        assert crud.queue_workers(s, within_seconds=0.2) == {}
        assert workers.recent(s, within=timedelta(seconds=0.2)) == []


@pytest.mark.parametrize("offset", [AHEAD, BEHIND], ids=["ahead", "behind"])
def test_webhook_delivery_lease_holds_between_api_processes_whose_clocks_differ(pg_url, process_clock, offset):
    job_id, tenant = insert_job(pg_url)
    with session_scope(pg_url) as s:
        webhooks.create_hook(s, tenant, "http://example.com/hook", list(webhooks.EVENTS))
        assert crud.request_cancel(s, s.get(Job, job_id))

    def as_process(delta: timedelta, fn):
        process_clock(delta)
        with session_scope(pg_url) as s:
            return fn(s)

    (event,) = as_process(offset, webhooks.pending_events)
    assert as_process(offset, lambda s: webhooks.fan_out(s, s.merge(event), {"job.cancelled": "{}"})) == 1
    (claimed,) = as_process(timedelta(0), lambda s: webhooks.claim_due(s, 30))  # due for every process
    assert as_process(offset, lambda s: webhooks.claim_due(s, 30)) == []  # leased by the other one
    as_process(offset, lambda s: webhooks.record_attempt(s, claimed[0].id, {}, ok=False, retry_in=60))
    assert as_process(timedelta(0), lambda s: webhooks.claim_due(s, 30)) == []  # retried in 60 s, not now


@pytest.mark.parametrize("offset", [timedelta(days=2), -timedelta(days=2)], ids=["ahead", "behind"])
def test_finish_times_are_the_database_clock_so_retention_keeps_new_jobs(pg_url, process_clock, offset):
    process_clock(offset)
    finished, failed, cancelled = (insert_job(pg_url)[0] for _ in range(3))
    with session_scope(pg_url) as s:
        crud.claim_job(s, finished, A, 30)
        crud.claim_job(s, failed, A, 30)
    with session_scope(pg_url) as s:
        assert crud.finish_job(s, finished, A, summary={}, artifacts=[("report.json", 2, "0" * 64, "x")],
                               resumed_from_step=None)
        assert crud.end_job(s, failed, A, JobState.failed, "boom")
        assert crud.request_cancel(s, s.get(Job, cancelled))
    with session_scope(pg_url) as s:
        assert crud.finished_before(s, days=1) == []
    for job_id in (finished, failed, cancelled):
        _assert_db_time(_row(pg_url, job_id).finished_at, pg_url)
    with session_scope(pg_url) as s:
        _assert_db_time(crud.list_artifacts(s, finished)[0].created_at, pg_url)
        _assert_db_time(webhooks.pending_events(s)[0].created_at, pg_url)
