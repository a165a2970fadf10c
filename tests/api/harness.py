"""Real service processes for the tests: uvicorn (`nern serve --no-worker`) and Celery workers
(`nern worker`), on SQLite or PostgreSQL, with the embedded broker or Redis.

Every process runs in its own session, so a test can kill -9 a worker with all its children.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("NERN_DATA_DIR", REPO.parent / "shared" / "data"))
RESNET20 = SHARED_DATA / "resnet20-12fca82f.th"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"

# Tiny jobs: the suite runs on two shared CPU cores.
TINY_SPEC: dict[str, Any] = {
    "arch": "resnet20", "steps": 3, "batch_size": 8, "hidden": 16, "emb_levels": 4, "eval_limit": 200,
    "eval_data": "cifar10-test", "threads": 1, "checkpoint_every": 1, "permute": "none",
}
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_pg_database() -> str:
    import psycopg

    name = f"nern_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def terminate_pg_backends(dbname: str) -> int:
    """pg_terminate_backend every connection to a database (a failover, as the workers see it)."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


class RedisServer:
    """A redis-server of the test's own on a free port (restartable without touching the shared one)."""

    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        persist = ["--appendonly", "yes"] if self.persistent else ["--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), *persist],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushdb()


def flush_redis(db: int) -> None:
    import redis

    redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()


class Deployment:
    """One service: a home folder, its settings as environment variables, its processes."""

    def __init__(self, home: Path, *, database_url: str | None = None, broker_url: str | None = None,
                 **settings: Any) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NERN_")}
        env.update(
            PYTHONPATH=str(REPO),
            NERN_HOME=str(home),
            NERN_DATA_DIR=str(SHARED_DATA),
            NERN_LEASE_SECONDS="6",
            NERN_HEARTBEAT_SECONDS="1",
            NERN_SWEEP_SECONDS="1",
            NERN_PROGRESS_SECONDS="0",
            NERN_AUTH_CACHE_SECONDS="1",
            OMP_NUM_THREADS="1",
        )
        if database_url:
            env["NERN_DATABASE_URL"] = database_url
        if broker_url:
            env["NERN_BROKER_URL"] = broker_url
        env.update({f"NERN_{k.upper()}": str(v) for k, v in settings.items()})
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None

    # -- processes

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.home / log_name, "ab")  # noqa: SIM115 - owned by the process
        p = subprocess.Popen([sys.executable, "-m", "api", *args], cwd=REPO, env=self.env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def start_api(self, timeout: float = 90) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.api = self._spawn(["serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)], "api.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"API exited with {self.api.returncode}:\n{self.log('api.log')}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"API not ready after {timeout} s:\n{self.log('api.log')}")

    def start_worker(self, queues: str = "cpu", name: str = "worker", concurrency: int | None = None
                     ) -> subprocess.Popen:
        args = ["worker", "--queues", queues, "--loglevel", "INFO"]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        return self._spawn(args, f"{name}.log")

    def terminate(self, p: subprocess.Popen, timeout: float = 60) -> int:
        """SIGTERM to the worker's main process only, as `docker stop` or systemd do; wait for it."""
        p.send_signal(signal.SIGTERM)
        return p.wait(timeout=timeout)

    def kill(self, p: subprocess.Popen) -> None:
        """kill -9 a process and every process of its session (a Celery worker and its pool)."""
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(p)

    def log(self, name: str) -> str:
        path = self.home / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "api", *args], cwd=REPO, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def create_key(self, tenant: str) -> str:
        r = self.cli("keys", "create", "--tenant", tenant)
        assert r.returncode == 0, r.stderr
        key = r.stdout.strip().splitlines()[-1]
        assert key.startswith("nern_")
        return key

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def submit(client: httpx.Client, spec: dict[str, Any] | None = None, checkpoint: bytes | Path = RESNET20,
           *, filename: str = "resnet20.th", headers: dict[str, str] | None = None,
           extra_files: dict[str, tuple[str, bytes]] | None = None) -> httpx.Response:
    data = checkpoint.read_bytes() if isinstance(checkpoint, Path) else checkpoint
    import json

    files = {"checkpoint": (filename, data, "application/octet-stream")}
    files.update({k: (v[0], v[1], "application/octet-stream") for k, v in (extra_files or {}).items()})
    return client.post("/jobs", files=files, data={"spec": json.dumps(TINY_SPEC if spec is None else spec)},
                       headers=headers or {})


def wait_for(client: httpx.Client, job_id: str, predicate, timeout: float = 180, poll: float = 0.25) -> dict:
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        if r.status_code == 503:  # the database is failing over (fault tests): ask again
            time.sleep(poll)
            continue
        job = r.json()
        if predicate(job):
            return job
        time.sleep(poll)
    raise AssertionError(f"timed out; last state of job {job_id}: {job}")


def wait_done(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    return wait_for(client, job_id, lambda j: j["state"] in TERMINAL, timeout)
