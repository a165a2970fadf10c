"""/metrics (prometheus-client) with bounded labels and job/worker series checked against the
jobs' own timestamps; X-Request-ID; JSON log lines from API and worker carrying request and
job ids."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import httpx
from harness import RESNET20, TINY_SPEC, submit, wait_done
from prometheus_client.parser import text_string_to_metric_families

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def _scrape(c: httpx.Client) -> dict[str, list]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def _value(samples, name: str, **labels) -> float:
    hits = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def _all_jobs(live) -> list[dict]:
    jobs = []
    for key in ("a", "b"):
        with live.client(key) as c:
            jobs += c.get("/jobs", params={"limit": 100}).json()["items"]
    return jobs


def _ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def test_made_up_methods_add_no_series(live):
    with live.client("a") as c:
        before = _scrape(c)
        for i in range(200):
            c.request(f"M{i}THOD", "/healthz")
            c.request("GET", f"/no/such/path/{i}")
        after = _scrape(c)
    series = [s for s in after["nern_http_requests"] if s.name == "nern_http_requests_total"]
    assert {s.labels["method"] for s in series} <= METHODS
    assert {s.labels["route"] for s in series if s.labels["method"] == "other"} == {"/healthz"}
    assert not any("/no/such" in s.labels["route"] for s in series)
    def count(m: dict) -> int:
        return sum(s.name == "nern_http_requests_total" for s in m["nern_http_requests"])

    assert count(after) - count(before) <= 3  # (other, /healthz, 405), (GET, unmatched, 404), /metrics: not 400
    assert _value(series, "nern_http_requests_total", method="other", route="/healthz", status="405") == 200


def test_job_and_worker_series_agree_with_the_jobs_timestamps(live):
    rid = "telemetry-test-0001"
    with live.client("a") as c:
        uploaded = _value(_scrape(c)["nern_upload_bytes"], "nern_upload_bytes_total")
        r = submit(c, {**TINY_SPEC, "name": "telemetry"}, headers={"X-Request-ID": rid})
        assert r.status_code == 202 and r.headers["x-request-id"] == rid
        jid = r.json()["id"]
        assert wait_done(c, jid)["state"] == "succeeded"
        assert c.get(f"/jobs/{jid}", headers={"X-Request-ID": rid}).headers["x-request-id"] == rid
        generated = c.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        assert c.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"] != "bad id"
        time.sleep(1.5)  # one more worker heartbeat
        m = _scrape(c)
    now = time.time()

    # Upload bytes: at least the checkpoint we sent, plus a little multipart framing.
    grew = _value(m["nern_upload_bytes"], "nern_upload_bytes_total") - uploaded
    assert RESNET20.stat().st_size <= grew <= RESNET20.stat().st_size + 16_384

    jobs = [j for j in _all_jobs(live) if j["state"] != "running"]
    started = [j for j in jobs if j["started_at"]]
    waits = [_ts(j["started_at"]) - _ts(j["created_at"]) for j in started]
    h = m["nern_job_queue_wait_seconds"]
    assert _value(h, "nern_job_queue_wait_seconds_count") == len(started)
    assert abs(_value(h, "nern_job_queue_wait_seconds_sum") - sum(waits)) < 0.01 + 1e-3 * sum(waits)
    assert _value(h, "nern_job_queue_wait_seconds_bucket", le="5.0") == sum(w <= 5 for w in waits)
    ok = [j for j in started if j["state"] == "succeeded"]
    runs = [_ts(j["finished_at"]) - _ts(j["started_at"]) for j in ok]
    h = m["nern_job_run_seconds"]
    assert _value(h, "nern_job_run_seconds_count", state="succeeded") == len(ok)
    assert abs(_value(h, "nern_job_run_seconds_sum", state="succeeded") - sum(runs)) < 0.01 + 1e-3 * sum(runs)
    assert _value(h, "nern_job_run_seconds_bucket", state="succeeded", le="+Inf") == len(ok)

    for state in ("queued", "succeeded", "cancelled"):
        n = sum(j["state"] == state for j in jobs)
        assert _value(m["nern_jobs"], "nern_jobs", state=state) == n
        assert sum(_value(m["nern_queue_jobs"], "nern_queue_jobs", queue=q, state=state) for q in ("cpu", "gpu")) == n

    beats = [s for s in m["nern_worker_last_heartbeat_timestamp_seconds"]]
    assert beats and max(s.value for s in beats) > now - 5
    workers = {s.labels["worker"] for s in beats}
    claimed = sum(s.value for s in m["nern_worker_jobs"] if s.name == "nern_worker_jobs_total")
    assert claimed == sum(j["attempts"] for j in jobs)  # every claim counted once
    assert {s.labels["worker"] for s in m["nern_worker_jobs_running"]} == workers
    assert not m.get("nern_worker_gpu_memory_bytes")  # CPU workers hold no CUDA memory
    assert _value(m["nern_training_steps_per_second"], "nern_training_steps_per_second", queue="cpu") >= 0

    # JSON logs: the API's lines of our requests carry our request id, and the job id.
    api_lines = _json_lines((live.deployment.home / "api.log").read_text())
    ours = [x for x in api_lines if x.get("request_id") == rid]
    assert {x.get("route") for x in ours} >= {"/jobs", "/jobs/{job_id}"}
    assert any(x.get("job_id") == jid and x["level"] == "INFO" and x["logger"] == "nern.api.access" for x in ours)
    worker_lines = _json_lines((live.deployment.home / "worker.log").read_text())
    job_lines = [x for x in worker_lines if x.get("job_id") == jid]
    assert any(x["message"].startswith(f"claimed job {jid}") for x in job_lines)
    assert all("timestamp" in x and "level" in x for x in job_lines)
