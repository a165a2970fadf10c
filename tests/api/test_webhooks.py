"""Webhooks against receivers the test runs on loopback: the HMAC we compute ourselves matches
X-Nern-Signature, one delivery per event, a 500 is retried and every attempt is recorded, the
body's job is what GET /jobs/{id} answers; tenants see only their own hooks; URL policy."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness import TINY_SPEC, submit, wait_done


class Receiver:
    """A loopback HTTP server recording every POST; paths in `fail_first` answer 500 once."""

    def __init__(self, fail_first: set[str] = frozenset()) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.fail_first = set(fail_first)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if self.path in outer.fail_first else 204
                outer.fail_first.discard(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in self.posts if p == path]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver(fail_first={"/flaky"})
    yield r
    r.close()


def _expect(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _wait(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_webhooks_signed_once_per_event_retried_after_500_and_private_to_the_tenant(live, receiver):
    all_events = ["job.succeeded", "job.failed", "job.cancelled"]
    with live.client("a") as a, live.client("b") as b:
        r = a.post("/webhooks", json={"url": receiver.url + "/ok", "events": all_events})
        assert r.status_code == 201, r.text
        ok = r.json()
        assert set(ok) == {"id", "url", "events", "secret", "created_at"} and ok["events"] == all_events
        flaky = a.post("/webhooks", json={"url": receiver.url + "/flaky", "events": ["job.cancelled"]}).json()

        # Tenant b sees none of them and can change none of them.
        assert b.get("/webhooks").json()["items"] == []
        assert b.delete(f"/webhooks/{ok['id']}").status_code == 404
        assert b.get(f"/webhooks/{ok['id']}/deliveries").status_code == 404
        listed = a.get("/webhooks").json()["items"]
        assert {h["id"] for h in listed} == {ok["id"], flaky["id"]} and all("secret" not in h for h in listed)

        # A queued job (gpu queue: no worker takes it) cancelled by the API.
        queued = submit(a, {**TINY_SPEC, "device": "cuda", "name": "hook-cancel"}).json()
        assert a.post(f"/jobs/{queued['id']}/cancel").status_code == 200
        # A job that runs to the end on the worker.
        done = submit(a, {**TINY_SPEC, "name": "hook-success"}).json()
        final = wait_done(a, done["id"])
        assert final["state"] == "succeeded"

        _wait(lambda: len(receiver.at("/ok")) >= 2 and len(receiver.at("/flaky")) >= 2)
        time.sleep(1.5)  # a duplicate would arrive within a few sender passes
        got = receiver.at("/ok")
        assert len(got) == 2
        by_event = {}
        for headers, body in got:
            assert headers["x-nern-signature"] == _expect(ok["secret"], body)
            assert headers["content-type"] == "application/json"
            doc = json.loads(body)
            assert doc["event"] == headers["x-nern-event"]
            by_event[doc["event"]] = doc
        assert set(by_event) == {"job.cancelled", "job.succeeded"}
        assert by_event["job.cancelled"]["job"]["id"] == queued["id"]
        assert by_event["job.cancelled"]["job"]["state"] == "cancelled"
        assert by_event["job.succeeded"]["job"] == a.get(f"/jobs/{done['id']}").json()

        # The hook that answered 500 first got the same signed body twice; both attempts recorded.
        (h1, b1), (h2, b2) = receiver.at("/flaky")
        assert b1 == b2 and h1["x-nern-delivery"] == h2["x-nern-delivery"]
        assert h2["x-nern-signature"] == _expect(flaky["secret"], b2)
        assert json.loads(b2)["job"]["id"] == queued["id"]
        deliveries = a.get(f"/webhooks/{flaky['id']}/deliveries").json()["items"]
        assert len(deliveries) == 1
        d = deliveries[0]
        assert (d["event"], d["job_id"], d["status"]) == ("job.cancelled", queued["id"], "delivered")
        assert [t["status_code"] for t in d["attempts"]] == [500, 204]
        oks = a.get(f"/webhooks/{ok['id']}/deliveries").json()["items"]
        assert sorted(x["event"] for x in oks) == ["job.cancelled", "job.succeeded"]
        assert all(x["status"] == "delivered" and len(x["attempts"]) == 1 for x in oks)

        # Deleting: gone from the list, further events not sent.
        assert a.delete(f"/webhooks/{flaky['id']}").status_code == 204
        assert a.delete(f"/webhooks/{flaky['id']}").status_code == 404
        assert [h["id"] for h in a.get("/webhooks").json()["items"]] == [ok["id"]]
        assert a.delete(f"/webhooks/{ok['id']}").status_code == 204


def test_webhook_requests_are_validated_as_problems(live):
    with live.client("a") as a:
        for body in ({"url": "ftp://example.com/x", "events": ["job.failed"]},
                     {"url": "http://127.0.0.1:1/x", "events": []},
                     {"url": "http://127.0.0.1:1/x", "events": ["job.started"]},
                     {"url": "http://no-such-host.invalid/x", "events": ["job.failed"]},
                     {"url": "http://127.0.0.1:1/x", "events": ["job.failed"], "extra": 1}):
            r = a.post("/webhooks", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        assert a.get("/webhooks").json()["items"] == []
    with live.client(None) as anon:
        assert anon.get("/webhooks").status_code == 401


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://localhost:8080/x", "http://[::1]/x", "http://10.1.2.3/x",
    "http://192.168.0.10/x", "http://172.16.5.4/x", "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/x", "http://0.0.0.0/x", "http://[fd00:ec2::254]/x", "http://[::ffff:127.0.0.1]/x",
])
def test_private_and_metadata_addresses_are_refused_by_default(url):
    from api.notify import WebhookUrlError, check_url

    with pytest.raises(WebhookUrlError):
        check_url(url, allow_private=False)


def test_allow_private_admits_loopback_but_never_metadata():
    from api.notify import WebhookUrlError, check_url

    check_url("http://127.0.0.1:9/x", allow_private=True)
    check_url("https://93.184.215.14/x", allow_private=False)  # a public address literal
    for url in ("http://169.254.169.254/x", "http://[fd00:ec2::254]/x", "http://100.100.100.200/x", "file:///etc/passwd",
                "http://user:pw@127.0.0.1/x"):
        with pytest.raises(WebhookUrlError):
            check_url(url, allow_private=True)
