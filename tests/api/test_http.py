"""Health, readiness, Prometheus metrics, OpenAPI, the dashboard page and problem+json errors."""

from __future__ import annotations

import re

from harness import submit


def test_healthz_and_readyz_report_db_and_broker(service):
    with service.client(None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_metrics_is_prometheus_text_counting_requests_and_jobs(service):
    with service.client() as c:
        for _ in range(3):
            c.get("/healthz")
        assert submit(c, {**_gpu_spec(), "name": "metrics-probe"}).status_code == 202
        text = c.get("/metrics").text
    # prometheus-client writes sample values as floats ("3.0").
    m = re.search(r'^nern_http_requests_total\{method="GET",route="/healthz",status="200"\} ([\d.]+)$', text, re.M)
    assert m and float(m.group(1)) >= 3
    # Route templates, not raw paths, label the series.
    assert 'route="/jobs/{job_id}"' in text or 'route="/jobs"' in text
    queued = re.search(r'^nern_jobs\{state="queued"\} ([\d.]+)$', text, re.M)
    assert queued and float(queued.group(1)) >= 1
    assert re.search(r'^nern_http_request_duration_seconds_count\{method="GET",route="/healthz"\} [\d.]+$', text, re.M)


def test_openapi_lists_the_job_routes(service):
    with service.client(None) as c:
        paths = c.get("/openapi.json").json()["paths"]
    for p in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/retry",
              "/jobs/{job_id}/metrics", "/jobs/{job_id}/artifacts", "/jobs/{job_id}/artifacts/{name}"):
        assert p in paths


def test_dashboard_pages_are_served_with_security_headers(service):
    with service.client(None) as c:
        for path in ("/dashboard", "/dashboard/jobs/abc", "/dashboard/compare?ids=a,b",
                     "/dashboard/static/jobs.js", "/dashboard/static/charts.js"):
            r = c.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
        page = c.get("/dashboard").text
        assert '<script src="/dashboard/static/jobs.js"></script>' in page and "<script>" not in page
        js = c.get("/dashboard/static/jobs.js").text
        assert 'api("/jobs?' in js and "setInterval(refresh" in js
        assert c.get("/dashboard/static/../main.py").status_code == 404
        assert c.get("/dashboard/static/nope.js").headers["content-type"] == "application/problem+json"
        assert c.get("/", follow_redirects=False).headers["location"] == "/dashboard"


def test_errors_are_problem_json_without_traces(service):
    with service.client() as c:
        for r, status in ((c.get("/nope"), 404), (c.delete("/jobs"), 405), (c.get("/jobs?limit=0"), 422),
                          (c.get("/jobs?state=bogus"), 422), (c.get("/jobs?cursor=xyz"), 422),
                          (c.post("/jobs", content=b"x", headers={"content-type": "text/plain"}), 415)):
            assert r.status_code == status, r.text
            assert r.headers["content-type"] == "application/problem+json"
            body = r.json()
            assert body["status"] == status and body["title"] and "Traceback" not in r.text


def _gpu_spec() -> dict:
    # device=cuda routes to the gpu queue, which the test worker does not consume: stays queued.
    from harness import TINY_SPEC

    return {**TINY_SPEC, "device": "cuda"}
