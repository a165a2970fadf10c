"""`nern serve | worker | keys`: commands that run the service on this machine or change its
database (NERN_HOME, or --data-dir)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from .cli_errors import fail, guarded


def register_local(subparsers: argparse._SubParsersAction) -> None:
    """Add `serve`, `worker` and `keys` (commands on this machine's deployment)."""
    p = subparsers.add_parser("serve", help="start the API (and, by default, a worker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, help="folder of the embedded deployment (NERN_HOME)")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker (workers run elsewhere)")
    p.add_argument("--queues", help="queues of the started worker (default: cpu, plus gpu with CUDA)")
    p.set_defaults(func=guarded(cmd_serve))

    p = subparsers.add_parser("worker", help="start a Celery worker for the job queues")
    p.add_argument("--queues", help="comma-separated: gpu,cpu (default: cpu, plus gpu with CUDA)")
    p.add_argument("--concurrency", type=int,
                   help="jobs run at once (default: GPUs × NERN_JOBS_PER_GPU with the gpu queue, else 1)")
    p.add_argument("--data-dir", type=Path, help="NERN_HOME of the embedded deployment")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=guarded(cmd_worker))

    keys = subparsers.add_parser("keys", help="create, revoke and list API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="create a key for a tenant (created if new) and print it")
    p.add_argument("--tenant", required=True)
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=guarded(cmd_keys_create))
    p = keys.add_parser("revoke", help="revoke a key (the key, or the prefix `keys list` shows)")
    p.add_argument("key")
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=guarded(cmd_keys_revoke))
    p = keys.add_parser("list", help="list keys (prefix, tenant, created, revoked)")
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=guarded(cmd_keys_list))


def _settings(args: argparse.Namespace):
    """Settings from the environment, with --data-dir as NERN_HOME (also for child processes)."""
    from .jobstore.settings import Settings

    if getattr(args, "data_dir", None):
        os.environ["NERN_HOME"] = str(args.data_dir)
    return Settings()


def cmd_keys_create(args: argparse.Namespace) -> int:
    from .jobstore import crud
    from .jobstore.db import migrate, session_scope

    settings = _settings(args)
    settings.ensure_dirs()
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        plain, _ = crud.create_key(session, args.tenant)
    print(plain)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from .jobstore import crud
    from .jobstore.db import migrate, session_scope

    settings = _settings(args)
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        n = crud.revoke_key(session, args.key)
    if n == 0:
        return fail("no active key matches")
    print(f"revoked {n} key(s)")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from .jobstore import crud
    from .jobstore.db import migrate, session_scope

    settings = _settings(args)
    migrate(settings.database_url)
    with session_scope(settings.database_url) as session:
        for key, tenant in crud.list_keys(session):
            revoked = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
            print(f"{key.prefix}…  {tenant:<20} created {key.created_at:%Y-%m-%d %H:%M}  {revoked}")
    return 0


def default_queues() -> str:
    """gpu,cpu on a node with GPUs — found without touching CUDA in this (parent) process."""
    from worker.devices import default_queues as queues

    return queues()


def cmd_worker(args: argparse.Namespace) -> int:
    from .jobstore.db import migrate

    settings = _settings(args)
    settings.ensure_dirs()
    migrate(settings.database_url)
    from worker.celery_app import make_celery

    queues = args.queues or default_queues()
    bad = [q for q in queues.split(",") if q not in ("gpu", "cpu")]
    if bad:
        return fail(f"unknown queue {bad[0]!r}; queues are gpu and cpu")
    concurrency = args.concurrency
    if concurrency is None:
        from worker.devices import visible_gpus

        gpus = len(visible_gpus()) if "gpu" in queues.split(",") else 0
        concurrency = max(1, gpus * settings.jobs_per_gpu)
    if concurrency < 1:
        return fail("--concurrency must be at least 1")
    os.environ["NERN_WORKER_QUEUES"] = queues  # for the pool processes' heartbeat rows
    app = make_celery(settings)
    app.worker_main([
        "worker", "-Q", queues, "-c", str(concurrency), "--loglevel", args.loglevel,
        "-n", f"nern-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])
    return 0


def _die_with_parent() -> None:
    """In the embedded worker (before exec): the kernel sends it SIGTERM when `nern serve` dies,
    even by SIGKILL, so no worker outlives its server (it hands its job back and exits)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .jobstore import crud
    from .jobstore.db import migrate, session_scope
    from .main import create_app

    settings = _settings(args)
    settings.ensure_dirs()
    migrate(settings.database_url)
    if settings.auth:
        with session_scope(settings.database_url) as session:
            if crud.count_active_keys(session) == 0:
                plain, _ = crud.create_key(session, "default")
                print(f"created an API key for tenant 'default' (shown once): {plain}", flush=True)
    worker = None
    if not args.no_worker:
        cmd = [sys.executable, "-m", "api", "worker", "--queues", args.queues or default_queues()]
        worker = subprocess.Popen(cmd, env={**os.environ, "NERN_HOME": str(settings.home)},
                                  preexec_fn=_die_with_parent)
    print(f"dashboard: http://{args.host}:{args.port}/dashboard  ·  API docs: http://{args.host}:{args.port}/docs",
          flush=True)
    try:
        from .logs import configure

        configure()  # JSON lines with request ids; our middleware writes the access lines
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info", log_config=None,
                    access_log=False)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0
