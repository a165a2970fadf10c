"""Job lifecycle with real Celery workers over Redis: durable cancel, kill -9 and resume,
lease expiry up to max attempts, retry, queue routing to a gpu worker, and the per-job time
limit."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from harness import TINY_SPEC, submit, wait_done, wait_for

pytestmark = pytest.mark.redis

LONG = {**TINY_SPEC, "steps": 100_000, "checkpoint_every": 10}  # runs until stopped


def _running_past(step: int):
    return lambda j: j["state"] == "running" and j["step"] >= step


def test_cancel_running_job_stops_within_a_few_steps(deployment, key):
    w = deployment.start_worker("cpu", "w-cancel")
    try:
        with deployment.client(key) as c:
            jid = submit(c, LONG).json()["id"]
            wait_for(c, jid, _running_past(3), timeout=120)
            r = c.post(f"/jobs/{jid}/cancel")
            assert r.status_code == 202 and r.json()["cancel_requested"] is True
            t0 = time.monotonic()
            job = wait_done(c, jid, timeout=30)
            assert job["state"] == "cancelled" and time.monotonic() - t0 < 10
            stopped_at = job["step"]
            assert 3 <= stopped_at < 1000
            time.sleep(1.5)
            assert c.get(f"/jobs/{jid}").json()["step"] == stopped_at  # nothing runs on
            assert c.get(f"/jobs/{jid}/artifacts").json()["items"] == []
    finally:
        deployment.kill(w)


def test_cancelled_queued_job_never_starts(deployment, key):
    with deployment.client(key) as c:
        jid = submit(c, {**TINY_SPEC, "device": "cuda"}).json()["id"]  # gpu queue: no worker yet
        assert c.post(f"/jobs/{jid}/cancel").json()["state"] == "cancelled"
        w = deployment.start_worker("gpu", "w-gpu-cancelled")
        try:
            deadline = time.monotonic() + 60
            while "not claimable" not in deployment.log("w-gpu-cancelled.log"):
                assert time.monotonic() < deadline, deployment.log("w-gpu-cancelled.log")
                time.sleep(0.5)
        finally:
            deployment.kill(w)
        job = c.get(f"/jobs/{jid}").json()
        assert (job["state"], job["attempts"], job["started_at"]) == ("cancelled", 0, None)


def test_gpu_job_goes_to_the_gpu_worker(deployment, key):
    with deployment.client(key) as c:
        jid = submit(c, {**TINY_SPEC, "device": "cuda"}).json()["id"]
        w = deployment.start_worker("gpu", "w-gpu")
        try:
            job = wait_done(c, jid, timeout=90)
        finally:
            deployment.kill(w)
    assert job["queue"] == "gpu" and job["attempts"] == 1
    assert "claimed job " + jid in deployment.log("w-gpu.log")
    # This machine has no CUDA: the library refuses, and the job fails with its one-line reason.
    assert job["state"] == "failed" and "CUDA" in job["error"]


def test_worker_killed_mid_job_resumes_on_another_worker(deployment, key):
    spec = {**TINY_SPEC, "steps": 120, "checkpoint_every": 10}
    w1 = deployment.start_worker("cpu", "w-kill-1")
    with deployment.client(key) as c:
        jid = submit(c, spec).json()["id"]
        wait_for(c, jid, _running_past(25), timeout=120)
        deployment.kill(w1)  # kill -9 the worker and its pool process
        killed_at = c.get(f"/jobs/{jid}").json()["step"]
        w2 = deployment.start_worker("cpu", "w-kill-2")
        try:
            job = wait_done(c, jid, timeout=240)
        finally:
            deployment.kill(w2)
        points = c.get(f"/jobs/{jid}/metrics", params={"max_points": 5000}).json()["points"]
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2
    resumed = job["resumed_from_step"]
    assert resumed > 0 and resumed % 10 == 0 and resumed <= killed_at
    assert job["summary"]["resumed_from_step"] == resumed and job["summary"]["steps"] == 120
    second = [p["step"] for p in points if p["attempt"] == 2 and p["stage"] == "training"]
    assert second[0] == resumed + 1 and second[-1] == 120


def test_job_fails_after_max_attempts_of_lost_workers_then_retry_succeeds(deployment, key):
    spec = {**TINY_SPEC, "steps": 80, "checkpoint_every": 10}
    with deployment.client(key) as c:
        jid = submit(c, spec).json()["id"]
        for attempt in (1, 2):  # the deployment allows 2 attempts
            w = deployment.start_worker("cpu", f"w-lost-{attempt}")
            wait_for(c, jid, lambda j, a=attempt: j["attempts"] == a and j["state"] == "running" and j["step"] >= 12,
                     timeout=120)
            deployment.kill(w)
        job = wait_for(c, jid, lambda j: j["state"] != "running", timeout=30)  # lease 6 s, sweep 1 s
        assert job["state"] == "failed" and job["attempts"] == 2
        assert "lease expired" in job["error"] and "gave up" in job["error"]

        r = c.post(f"/jobs/{jid}/retry")
        assert r.status_code == 202 and r.json()["attempts"] == 0 and r.json()["error"] is None
        w = deployment.start_worker("cpu", "w-retry")
        try:
            job = wait_done(c, jid, timeout=240)
        finally:
            deployment.kill(w)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert job["resumed_from_step"] > 0  # the retry picked up the saved training state


def test_job_past_its_time_limit_fails_and_its_worker_moves_on(deployment, key):
    w = deployment.start_worker("cpu", "w-limit")  # one pool process: it runs one job at a time
    try:
        with deployment.client(key) as c:
            jid = submit(c, {**LONG, "time_limit_s": 3}).json()["id"]
            job = wait_done(c, jid, timeout=120)
            assert (job["state"], job["attempts"]) == ("failed", 1), job
            assert job["error"] == "the job ran past its time limit of 3 s (spec.time_limit_s)"
            ran = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
            assert 3 <= ran.total_seconds() < 10  # the sweeper runs every second

            # The worker finds its lease gone at its next heartbeat, stops training and ends the task.
            deadline = time.monotonic() + 30
            while ": 'lost'" not in deployment.log("w-limit.log"):  # the task's return value
                assert time.monotonic() < deadline, deployment.log("w-limit.log")
                time.sleep(0.3)
            assert f"lost the lease on job {jid}" in deployment.log("w-limit.log")
            stopped_at = c.get(f"/jobs/{jid}").json()["step"]
            time.sleep(1.5)
            assert c.get(f"/jobs/{jid}").json()["step"] == stopped_at  # nothing runs on
            assert c.get(f"/jobs/{jid}/artifacts").json()["items"] == []
            assert not list((deployment.home / "artifacts" / "jobs" / jid).glob("artifacts/*"))

            # The same worker takes the next job and runs it to the end; the first stays failed.
            nxt = submit(c, TINY_SPEC).json()["id"]
            assert wait_done(c, nxt, timeout=120)["state"] == "succeeded"
            assert f"claimed job {nxt}" in deployment.log("w-limit.log")
            job = c.get(f"/jobs/{jid}").json()
            assert (job["state"], job["attempts"], job["step"]) == ("failed", 1, stopped_at)
    finally:
        deployment.kill(w)
