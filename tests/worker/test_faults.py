"""Faults of a real cluster, on real processes: PostgreSQL + a Redis server of the test's own,
`nern serve --no-worker` and `nern worker` as separate processes.

The chaos test runs two workers with --concurrency 2 (forked pools on PostgreSQL), loses the
broker's queue (FLUSHDB and a restart without persistence) with jobs queued, kills workers with
SIGKILL at least 10 times mid-job, and terminates every database connection mid-job
(pg_terminate_backend), while it records the jobs' history. Then it checks the invariants: no
accepted job lost, exactly one terminal state each (never left), no two workers on one job at
once (each attempt's metric points are a contiguous, increasing run), every artifact's sha256
as recorded. Counts are printed as a JSON line (`pytest -s`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import httpx
import pytest
from harness import (
    REPO,
    TERMINAL,
    TINY_SPEC,
    Deployment,
    RedisServer,
    create_pg_database,
    drop_pg_database,
    free_port,
    submit,
    terminate_pg_backends,
    wait_done,
    wait_for,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CHAOS_SPEC = {**TINY_SPEC, "steps": 30, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("faults")
    redis_server = RedisServer(home / "redis")
    redis_server.start()
    pg = create_pg_database()
    dep = Deployment(home, database_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg}",
                     broker_url=redis_server.url, max_attempts=20, lease_seconds=4, heartbeat_seconds=0.5,
                     republish_seconds=3, db_retry_seconds=30, key_failures_per_minute=5,
                     tenant_max_active_jobs=12, tenant_max_bytes=64 * 2**20)
    dep.pg_name = pg
    dep.redis = redis_server
    try:
        dep.start_api()
        dep.key = dep.create_key("tenant-faults")
        yield dep
    finally:
        dep.stop()
        redis_server.stop()
        drop_pg_database(pg)


class History:
    """Polls every job of the tenant and records (time, id, state, attempts, step) changes."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.events: dict[str, list[tuple[float, str, int, int]]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> History:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                items = self.client.get("/jobs", params={"limit": 100}).json()["items"]
            except (httpx.HTTPError, KeyError, ValueError):
                continue
            for j in items:
                ev = (time.monotonic(), j["state"], j["attempts"], j["step"])
                if not self.events[j["id"]] or self.events[j["id"]][-1][1:] != ev[1:]:
                    self.events[j["id"]].append(ev)


def _running_jobs(c: httpx.Client) -> list[dict]:
    return c.get("/jobs", params={"state": "running", "limit": 100}).json()["items"]


def test_no_job_lost_under_worker_kills_db_drops_and_broker_loss(cluster):
    rng = random.Random(8)
    counts = {"sigkill": 0, "pg_terminate_backend": 0, "redis_flush": 0, "redis_restart": 0}
    accepted: list[str] = []
    t0 = time.monotonic()
    with cluster.client(cluster.key) as c, History(cluster.client(cluster.key)) as history:
        # Broker loss with jobs queued: their messages vanish (flush, then a restart without
        # persistence); the sweeper sends them again once they sat unclaimed republish_seconds.
        for i in range(3):
            r = submit(c, {**CHAOS_SPEC, "name": f"early-{i}"})
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        wait_for(c, accepted[-1], lambda j: True)
        time.sleep(0.5)
        cluster.redis.flush()
        counts["redis_flush"] += 1
        cluster.redis.stop()
        cluster.redis.start()
        counts["redis_restart"] += 1

        workers = {n: cluster.start_worker("cpu", f"chaos-{n}", concurrency=2) for n in ("a", "b")}
        for i in range(4):
            r = submit(c, {**CHAOS_SPEC, "name": f"late-{i}"})
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])

        # SIGKILL a worker (with its pool) while it runs jobs, then start it again; terminate every
        # database connection now and then. At least 10 kills. The first round waits for a job past
        # its first checkpoint and kills both workers, so at least one attempt dies after a
        # checkpoint and its job must resume (on a slow CPU the later kills may all land before one).
        deadline = time.monotonic() + 240
        while counts["sigkill"] < 10:
            assert time.monotonic() < deadline, f"too slow: {counts}"
            first = counts["sigkill"] == 0
            running = [j for j in _running_jobs(c) if (CHAOS_SPEC["checkpoint_every"] < j["step"] < 20 if first
                                                        else j["step"] >= 2)]
            if not running:
                time.sleep(0.1 if first else 0.3)
                continue
            for name in sorted(workers) if first else [rng.choice(sorted(workers))]:
                cluster.kill(workers[name])
                counts["sigkill"] += 1
                workers[name] = cluster.start_worker("cpu", f"chaos-{name}", concurrency=2)
            if counts["sigkill"] % 3 == 0:
                counts["pg_terminate_backend"] += terminate_pg_backends(cluster.pg_name)
            if counts["sigkill"] == 5:  # the workers announce themselves to the API
                live = re.search(r'nern_queue_workers\{queue="cpu"\} (\d+)', c.get("/metrics").text)
                assert live and int(live.group(1)) >= 1
            time.sleep(rng.uniform(0.5, 2.0))
        for _ in range(2):
            wait_for(c, accepted[0], lambda j: True)
            if _running_jobs(c):
                counts["pg_terminate_backend"] += terminate_pg_backends(cluster.pg_name)
            time.sleep(1.5)

        finals = {jid: wait_done(c, jid, timeout=300) for jid in accepted}
        time.sleep(1.5)  # the history sees the final states, and anything that would follow them
        for w in workers.values():
            cluster.kill(w)

        # No accepted job lost; every one succeeded (attempts are plentiful) and stays so.
        assert {j["state"] for j in finals.values()} == {"succeeded"}, {k: (j["state"], j["error"]) for k, j in
                                                                        finals.items()}
        for jid in accepted:
            states = [e[1] for e in history.events[jid]]
            first_terminal = next(i for i, s in enumerate(states) if s in TERMINAL)
            assert set(states[first_terminal:]) == {"succeeded"}, (jid, states)
            assert c.get(f"/jobs/{jid}").json()["state"] == "succeeded"

            # One worker at a time: the metric points of each attempt form one contiguous run in
            # insertion order, with training steps increasing within it.
            points = c.get(f"/jobs/{jid}/metrics", params={"max_points": 5000}).json()["points"]
            runs = [p["attempt"] for p in points]
            collapsed = [a for i, a in enumerate(runs) if i == 0 or runs[i - 1] != a]
            assert collapsed == sorted(set(collapsed)), (jid, collapsed)
            for attempt in set(runs):
                steps = [p["step"] for p in points if p["attempt"] == attempt and p["stage"] == "training"]
                assert steps == sorted(set(steps)), (jid, attempt, steps)

            # Every artifact's bytes (stored and downloaded) hash to the recorded sha256.
            arts = c.get(f"/jobs/{jid}/artifacts").json()["items"]
            assert {"predictor.nern", "report.json", "reconstructed.safetensors"} <= {a["name"] for a in arts}
            for a in arts:
                path = cluster.home / "artifacts" / "jobs" / jid / "artifacts" / a["name"]
                assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"], (jid, a["name"])
            body = c.get(f"/jobs/{jid}/artifacts/predictor.nern").content
            assert hashlib.sha256(body).hexdigest() == next(a["sha256"] for a in arts if a["name"] == "predictor.nern")

    attempts = sum(j["attempts"] for j in finals.values())
    resumed = sum(1 for j in finals.values() if j["resumed_from_step"])
    print(json.dumps({"test": "chaos", **counts, "jobs": len(accepted), "lost": 0, "attempts": attempts,
                      "resumed": resumed, "seconds": round(time.monotonic() - t0, 1)}))
    assert counts["pg_terminate_backend"] >= 1 and resumed >= 1


def test_db_drops_fail_nothing_and_sigterm_hands_the_job_back_without_an_attempt(cluster):
    w = cluster.start_worker("cpu", "drain", concurrency=2)
    with cluster.client(cluster.key) as c:
        jid = submit(c, {**TINY_SPEC, "steps": 100_000, "checkpoint_every": 5}).json()["id"]
        job = wait_for(c, jid, lambda j: j["state"] == "running" and j["step"] >= 3, timeout=120)
        # Every database connection terminated, three times, while the job trains: it keeps
        # running on its first attempt (progress and heartbeats retry; only a lost lease stops it).
        dropped = 0
        for _ in range(3):
            dropped += terminate_pg_backends(cluster.pg_name)
            time.sleep(0.7)
        before = job["step"]
        job = wait_for(c, jid, lambda j: j["step"] >= before + 5, timeout=60)
        assert (job["state"], job["attempts"], job["error"]) == ("running", 1, None), job
        assert dropped >= 3
        r = c.delete(f"/jobs/{jid}")
        assert r.status_code == 409 and "cancel it" in r.json()["detail"]

        # A deploy stops the worker (SIGTERM to its main process): the job goes back to the
        # queue at its next step, its attempt not counted, and the worker exits promptly.
        t = time.monotonic()
        rc = cluster.terminate(w, timeout=60)
        stopped_in = time.monotonic() - t
        job = c.get(f"/jobs/{jid}").json()
        assert (job["state"], job["attempts"], job["error"]) == ("queued", 0, None), job
        assert c.delete(f"/jobs/{jid}").status_code == 204
        assert c.get(f"/jobs/{jid}").status_code == 404
        assert "handed back" in cluster.log("drain.log")
    assert rc == 0 and stopped_in < 30


def test_tenant_limits_and_failed_key_rate_limit(cluster):
    import io

    import numpy as np

    key = cluster.create_key("tenant-limits")
    queued = {**TINY_SPEC, "device": "cuda"}  # gpu queue: nobody takes these
    with cluster.client(key) as c:
        ids = [submit(c, queued).json()["id"] for _ in range(12)]
        r = submit(c, queued)
        assert r.status_code == 429 and r.json()["type"].endswith("tenant-job-limit"), r.text
        # No gpu worker runs: the jobs say so, and so do the metrics.
        job = wait_for(c, ids[-1], lambda j: j["waiting_reason"] is not None, timeout=30)
        assert "no live worker serves the 'gpu' queue" in job["waiting_reason"]
        text = c.get("/metrics").text
        assert 'nern_queue_workers{queue="gpu"} 0' in text
        assert int(re.search(r'nern_jobs_unservable\{queue="gpu"\} (\d+)', text).group(1)) >= 12
        assert c.delete(f"/jobs/{ids[0]}").status_code == 204  # a slot frees up
        # Storage: 12 checkpoints (~13 MB) stored; a 61 MB data part passes the 64 MiB limit.
        buf = io.BytesIO()
        images = np.random.default_rng(0).integers(0, 255, (20_000, 32, 32, 3), dtype=np.uint8)
        np.savez(buf, images=images)
        r = submit(c, {**queued, "data": "big.npz"}, extra_files={"big.npz": ("big.npz", buf.getvalue())})
        assert r.status_code == 413 and r.json()["type"].endswith("tenant-storage-full"), r.text
        for jid in ids[1:]:
            assert c.delete(f"/jobs/{jid}").status_code == 204
            assert not (cluster.home / "artifacts" / "jobs" / jid).exists()
        assert c.get("/jobs").json()["items"] == []
    # Five wrong keys from one address within a minute: the sixth request is refused (even a good key).
    with cluster.client("nern_wrong") as bad:
        assert [bad.get("/jobs").status_code for _ in range(5)] == [401] * 5
        r = bad.get("/jobs")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    with cluster.client(cluster.create_key("tenant-fresh")) as good:
        assert good.get("/jobs").status_code == 429


def test_worker_parent_never_initialises_cuda(tmp_path):
    # Any CUDA call in the parent (before Celery forks its pool) breaks CUDA in the children.
    code = (
        "import sys, torch\n"
        "def boom(*a, **k):\n    print('CUDA touched in the parent', flush=True); sys.exit(3)\n"
        "torch.cuda.is_available = torch.cuda.init = torch.cuda.device_count = boom\n"
        "import worker.tasks, worker.celery_app\n"
        "from api.cli import default_queues\n"
        "print(default_queues())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "NERN_HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": "0,1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "gpu,cpu"


def test_pool_processes_are_spread_over_the_gpus():
    from worker.devices import gpu_for_process

    gpus = ["0", "1", "2"]
    assert [gpu_for_process(i, gpus, 1) for i in range(6)] == ["0", "1", "2", "0", "1", "2"]
    assert [gpu_for_process(i, gpus, 2) for i in range(6)] == ["0", "0", "1", "1", "2", "2"]
    assert gpu_for_process(4, [], 1) is None


class _AcceptedRequest:  # celery.worker.state keeps requests in a WeakSet
    worker_pid: int


def test_stopping_worker_signals_only_the_pool_processes_that_run_a_job():
    """An idle pool process killed by SIGTERM can take a pool queue lock with it and hang the
    warm shutdown (a worker that outlived its server, CI 2026-11-29): only busy ones are told."""
    from celery.worker import state

    from worker.celery_app import _drain_pool

    busy, idle = (subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2))
    request = _AcceptedRequest()  # what Celery records when a pool process accepts a task
    request.worker_pid = busy.pid
    state.active_requests.add(request)
    try:
        _drain_pool()
        assert busy.wait(timeout=10) == -signal.SIGTERM
        time.sleep(0.5)
        assert idle.poll() is None
    finally:
        state.active_requests.discard(request)
        for p in (busy, idle):
            p.kill()
            p.wait()


def test_embedded_worker_ends_with_its_server_even_on_sigkill(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NERN_")}
    env.update(PYTHONPATH=str(REPO), NERN_HOME=str(tmp_path), OMP_NUM_THREADS="1")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen([sys.executable, "-m", "api", "serve", "--port", str(port), "--queues", "cpu"],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        worker = None
        while worker is None:
            assert time.monotonic() < deadline and serve.poll() is None, (tmp_path / "serve.log").read_text()
            kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == serve.pid]
            worker = kids[0] if kids else None
            time.sleep(0.3)
        time.sleep(3)  # let it get going
        serve.kill()  # SIGKILL the server alone
        serve.wait(timeout=10)
        deadline = time.monotonic() + 40
        while _alive(worker):
            assert time.monotonic() < deadline, "the embedded worker outlived its server"
            time.sleep(0.3)
    finally:
        try:
            os.killpg(serve.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
