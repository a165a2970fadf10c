"""Job resource behaviour that needs no training: idempotency, pagination and filters, cancel
and retry of queued jobs, queue routing, API keys and tenant isolation."""

from __future__ import annotations

import time
from datetime import datetime

from harness import SHARED_DATA, TINY_SPEC, submit

QUEUED_SPEC = {**TINY_SPEC, "device": "cuda"}  # gpu queue: the test worker only consumes cpu


def test_submit_answers_202_location_and_the_job(service):
    with service.client() as c:
        r = submit(c, {**QUEUED_SPEC, "name": "first"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/jobs/{job['id']}"
        assert (job["state"], job["stage"], job["progress"], job["attempts"]) == ("queued", "queued", 0.0, 0)
        assert job["name"] == "first" and job["arch"] == "resnet20" and job["total_steps"] == 3
        assert job["checkpoint_bytes"] == 1_099_231
        assert job["checkpoint_sha256"].startswith("12fca82f0bebc413")
        assert c.get(r.headers["location"]).json()["id"] == job["id"]


def test_idempotency_key_replays_the_same_job(service):
    key = f"idem-{time.time_ns()}"
    with service.client("a") as a, service.client("b") as b:
        r1 = submit(a, QUEUED_SPEC, headers={"Idempotency-Key": key})
        r2 = submit(a, QUEUED_SPEC, headers={"Idempotency-Key": key})
        assert r1.status_code == r2.status_code == 202
        assert r2.json()["id"] == r1.json()["id"] and r2.headers["idempotent-replayed"] == "true"
        # Same key, different body: refused, not silently answered with the first job.
        r3 = submit(a, {**QUEUED_SPEC, "steps": 4}, headers={"Idempotency-Key": key})
        assert r3.status_code == 422 and r3.json()["type"].endswith("idempotency-key-reused")
        # Keys are per tenant.
        r4 = submit(b, QUEUED_SPEC, headers={"Idempotency-Key": key})
        assert r4.status_code == 202 and r4.json()["id"] != r1.json()["id"]
        ids = [j["id"] for j in a.get("/jobs", params={"limit": 100}).json()["items"]]
        assert ids.count(r1.json()["id"]) == 1


def test_cursor_pagination_and_filters(service):
    key = service.deployment.create_key(f"tenant-pages-{time.time_ns()}")
    with service.deployment.client(key) as c:
        made = [submit(c, {**QUEUED_SPEC, "name": f"p{i}"}).json()["id"] for i in range(5)]
        mid = c.get(f"/jobs/{made[2]}").json()["created_at"]
        r32 = submit(c, {**QUEUED_SPEC, "arch": "resnet32"}, SHARED_DATA / "resnet32-d509ac18.th").json()["id"]
        seen, cursor, pages = [], None, 0
        while True:
            page = c.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            assert set(page) == {"items", "next_cursor"} and len(page["items"]) <= 2
            seen += [j["id"] for j in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [r32, *reversed(made)] and pages == 3  # newest first, each job once

        assert [j["id"] for j in c.get("/jobs", params={"arch": "resnet32"}).json()["items"]] == [r32]
        assert c.post(f"/jobs/{made[0]}/cancel").status_code == 200
        cancelled = c.get("/jobs", params={"state": "cancelled"}).json()["items"]
        assert [j["id"] for j in cancelled] == [made[0]]
        both = c.get("/jobs", params=[("state", "cancelled"), ("state", "queued")]).json()["items"]
        assert len(both) == 6
        after = c.get("/jobs", params={"created_after": mid}).json()["items"]
        assert [j["id"] for j in after] == [r32, made[4], made[3], made[2]]
        before = c.get("/jobs", params={"created_before": mid}).json()["items"]
        assert [j["id"] for j in before] == [made[1], made[0]]
        assert datetime.fromisoformat(after[-1]["created_at"]) >= datetime.fromisoformat(mid)


def test_cancel_and_retry_of_a_queued_job(service):
    with service.client() as c:
        job = submit(c, QUEUED_SPEC).json()
        r = c.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["finished_at"]
        r = c.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        r = c.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 202 and r.json()["state"] == "queued" and r.json()["attempts"] == 0
        assert not r.json()["cancel_requested"] and r.json()["finished_at"] is None
        r = c.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 409 and "only failed or cancelled" in r.json()["detail"]


def test_queue_routing_by_device(service):
    with service.client() as c:
        gpu = submit(c, QUEUED_SPEC).json()
        cpu = submit(c, {**TINY_SPEC, "device": "cpu", "steps": 1}).json()
        assert (gpu["queue"], cpu["queue"]) == ("gpu", "cpu")
        # The test service runs only a cpu worker: the cpu job is taken, the gpu job waits.
        deadline = time.monotonic() + 120
        while c.get(f"/jobs/{cpu['id']}").json()["attempts"] == 0:
            assert time.monotonic() < deadline, "the cpu worker never took the cpu job"
            time.sleep(0.3)
        still = c.get(f"/jobs/{gpu['id']}").json()
        assert (still["state"], still["attempts"]) == ("queued", 0)


def test_api_keys_are_required_checked_and_revocable(service):
    dep = service.deployment
    with service.client(None) as anon:
        r = anon.get("/jobs")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/jobs", headers={"Authorization": "Bearer nern_nope"}).status_code == 401
        assert anon.get("/jobs", headers={"Authorization": "Basic abc"}).status_code == 401
    key = dep.create_key("tenant-revoke")
    with dep.client(key) as c:
        assert c.get("/jobs").status_code == 200
        listed = dep.cli("keys", "list")
        assert listed.returncode == 0 and key[:12] in listed.stdout and "tenant-revoke" in listed.stdout
        r = dep.cli("keys", "revoke", key)
        assert r.returncode == 0, r.stderr
        time.sleep(1.5)  # the API trusts a checked key for NERN_AUTH_CACHE_SECONDS (1 s here)
        assert c.get("/jobs").status_code == 401
    r = dep.cli("keys", "revoke", key)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "no active key" in r.stderr
    # Keys are stored hashed: the plain key appears nowhere in the database file.
    if service.backend == "sqlite":
        db = (dep.home / "nern.db").read_bytes() + (dep.home / "nern.db-wal").read_bytes()
        assert key.encode() not in db


def test_other_tenants_jobs_are_404_on_every_route(service):
    with service.client("a") as a, service.client("b") as b:
        job = submit(a, QUEUED_SPEC).json()
        jid = job["id"]
        for method, path in (("GET", f"/jobs/{jid}"), ("POST", f"/jobs/{jid}/cancel"), ("POST", f"/jobs/{jid}/retry"),
                             ("GET", f"/jobs/{jid}/metrics"), ("GET", f"/jobs/{jid}/artifacts"),
                             ("GET", f"/jobs/{jid}/artifacts/report.json")):
            r = b.request(method, path)
            assert r.status_code == 404, (method, path, r.status_code)
            assert r.json()["detail"] == f"no job {jid!r}"
            assert a.request("GET", f"/jobs/{jid}").json()["state"] == "queued"  # untouched
        assert jid not in [j["id"] for j in b.get("/jobs", params={"limit": 100}).json()["items"]]
        # An id that exists nowhere answers exactly the same.
        assert b.get("/jobs/0123456789abcdef0123456789abcdef").json()["detail"].startswith("no job")
