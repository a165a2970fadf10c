"""The webhook outbox on the job store itself (SQLite, no processes): every way a job reaches a
terminal state writes exactly one job_events row in the same transaction, and a lost race
writes none."""

from __future__ import annotations

from datetime import timedelta

import pytest
from jobstores import insert_job, sqlite_store
from sqlalchemy import select

from api.jobstore import crud, webhooks
from api.jobstore.db import session_scope
from api.jobstore.models import Job
from api.jobstore.states import JobState


@pytest.fixture
def url(tmp_path) -> str:
    return sqlite_store(tmp_path)


def _events(url: str) -> list[tuple[str, str]]:
    with session_scope(url) as s:
        return [(e.job_id, e.event) for e in s.scalars(select(webhooks.JobEvent).order_by(webhooks.JobEvent.id))]


def test_each_terminal_transition_writes_one_event(url):
    queued, _ = insert_job(url)
    with session_scope(url) as s:
        assert crud.request_cancel(s, s.get(Job, queued))
    with session_scope(url) as s:  # already cancelled: no second event
        assert not crud.request_cancel(s, s.get(Job, queued))

    with session_scope(url) as s:
        job = crud.claim_job(s, insert_job(url)[0], "w:1:a", 60)
        ran = job.id
    with session_scope(url) as s:
        assert crud.finish_job(s, ran, "w:1:a", summary={}, artifacts=[], resumed_from_step=None)
    with session_scope(url) as s:  # another owner cannot end it again
        assert not crud.end_job(s, ran, "w:2:b", JobState.failed, "late")

    with session_scope(url) as s:
        failing = crud.claim_job(s, insert_job(url)[0], "w:1:a", 60).id
    with session_scope(url) as s:
        assert crud.end_job(s, failing, "w:1:a", JobState.failed, "boom")

    past = crud.utcnow() - timedelta(seconds=5)
    lost, _ = insert_job(url, state="running", attempts=2, lease_owner="w:3:c", lease_expires_at=past)
    dropped, _ = insert_job(url, state="running", attempts=1, lease_owner="w:3:c", lease_expires_at=past,
                      cancel_requested=True)
    requeued, _ = insert_job(url, state="running", attempts=1, lease_owner="w:3:c", lease_expires_at=past)
    with session_scope(url) as s:
        assert crud.expire_leases(s) == 3

    assert sorted(_events(url)) == sorted([
        (queued, "job.cancelled"), (ran, "job.succeeded"), (failing, "job.failed"),
        (lost, "job.failed"), (dropped, "job.cancelled"),
    ])
    assert all(j != requeued for j, _ in _events(url))


def test_fan_out_makes_one_delivery_per_subscribed_hook_once(url):
    job_id, tenant = insert_job(url)
    with session_scope(url) as s:
        all_events = webhooks.create_hook(s, tenant, "http://example.com/a", list(webhooks.EVENTS))
        webhooks.create_hook(s, tenant, "http://example.com/b", ["job.failed"])
        other = crud.get_or_create_tenant(s, "other").id
        webhooks.create_hook(s, other, "http://example.com/c", list(webhooks.EVENTS))
    with session_scope(url) as s:
        crud.request_cancel(s, s.get(Job, job_id))
    with session_scope(url) as s:
        (ev,) = webhooks.pending_events(s)
        assert webhooks.fan_out(s, ev, {"job.cancelled": "{}"}) == 1
        assert webhooks.fan_out(s, ev, {"job.cancelled": "{}"}) == 0  # a second sender gets nothing
    with session_scope(url) as s:
        assert webhooks.pending_events(s) == []
        (d,) = webhooks.list_deliveries(s, all_events.id)
        assert (d.job_id, d.event, d.status) == (job_id, "job.cancelled", "pending")
        claimed = webhooks.claim_due(s, 30)
        assert [x.id for x, _ in claimed] == [d.id] and webhooks.claim_due(s, 30) == []
