"""The Python client against the real server: each error answer raises its own class (all
subclasses of ApiError), pages iterate, metrics read; the service CLI fails with one line and 2."""

from __future__ import annotations

import pytest
from harness import RESNET20, TINY_SPEC, free_port

from api import client as cl

QUEUED = {**TINY_SPEC, "device": "cuda"}  # gpu queue: no test worker takes it


# The client's error mapping does not depend on the database: the SQLite service is enough.
pytestmark = pytest.mark.parametrize("service", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def api(service):
    key = service.deployment.create_key("tenant-client")
    with cl.NernClient(service.deployment.url, key) as c:
        yield c


def test_each_error_status_raises_its_class(service, api, tmp_path):
    with pytest.raises(cl.NotFound) as e:
        api.job("0" * 32)
    assert e.value.status == 404 and isinstance(e.value, cl.HttpError) and isinstance(e.value, cl.ApiError)

    job = api.submit(RESNET20, QUEUED)
    assert api.cancel(job["id"])["state"] == "cancelled"
    with pytest.raises(cl.Conflict) as e:
        api.cancel(job["id"])
    assert e.value.status == 409 and "nothing to cancel" in e.value.detail

    with pytest.raises(cl.ValidationError) as e:
        api.submit(RESNET20, {**QUEUED, "steps": -1})
    assert e.value.status == 422 and e.value.body["errors"][0]["loc"] == ["spec", "steps"]

    with cl.NernClient(service.deployment.url, "nern_not_a_key") as bad, pytest.raises(cl.Unauthorized) as e:
        bad.jobs()
    assert e.value.status == 401

    big = tmp_path / "big.th"
    big.write_bytes(b"\0" * (5 * 2**20))  # the test service allows 4 MiB
    with pytest.raises(cl.PayloadTooLarge) as e:
        api.submit(big, QUEUED)
    assert e.value.status == 413

    with cl.NernClient(f"http://127.0.0.1:{free_port()}", "k", timeout=5) as nowhere:
        with pytest.raises(cl.TransportError) as e:
            nowhere.job("x")
    assert e.value.status is None and "cannot reach" in str(e.value)

    assert {cl.error_class(s) for s in (400, 418)} == {cl.BadRequest}
    assert cl.error_class(503) is cl.ServerError and cl.error_class(429) is cl.TooManyRequests


def test_iter_jobs_walks_every_page_and_metrics_reads(api):
    ids = {api.submit(RESNET20, {**QUEUED, "name": f"page-{i}"})["id"] for i in range(3)}
    seen = [j["id"] for j in api.iter_jobs(limit=1)]
    assert ids <= set(seen) and len(seen) == len(set(seen))
    one = next(iter(ids))
    assert api.metrics(one) == {"job_id": one, "points": []}


def test_service_cli_errors_are_one_line_and_exit_2(service):
    dep = service.deployment
    env = {"NERN_SERVER": dep.url, "NERN_API_KEY": "nern_bad"}
    for args, words in (
        (("jobs", "status", "0" * 32), "401"),  # an error answer of the server
        (("keys", "list"), "database"),  # a driver error several lines long
    ):
        extra = {"NERN_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"} if args == ("keys", "list") else {}
        r = dep.cli(*args, env={**env, **extra})
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("nern: error:") and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
