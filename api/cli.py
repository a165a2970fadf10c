"""`nern serve | worker | keys | jobs | demo` — registered into the `nern` command through the
entry-point group `nern.commands` (pyproject.toml), so the library names nothing of the service.

Every command returns an exit code: 0, or 2 with one line `nern: error: ...` on stderr (130
when interrupted). Errors of the server (`api.client.ApiError`), of the database and of local
files all end that way, never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .client import ApiError, NernClient
from .jobstore.states import JobState


def _guarded(func):
    """Database and file errors of a local command (serve, worker, keys) as one error line."""

    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return func(args)
        except SQLAlchemyError as e:
            return _fail(f"database: {type(e).__name__}: {str(e.orig if getattr(e, 'orig', None) else e)[:300]}")
        except OSError as e:
            return _fail(f"{e.filename or ''}: {e.strerror or e}")
        except KeyboardInterrupt:
            return _fail("interrupted", 130)

    run.__name__ = func.__name__
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the service's subcommands to the `nern` parser."""
    p = subparsers.add_parser("serve", help="start the API (and, by default, a worker)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, help="folder of the embedded deployment (NERN_HOME)")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker (workers run elsewhere)")
    p.add_argument("--queues", help="queues of the started worker (default: cpu, plus gpu with CUDA)")
    p.set_defaults(func=_guarded(cmd_serve))

    p = subparsers.add_parser("worker", help="start a Celery worker for the job queues")
    p.add_argument("--queues", help="comma-separated: gpu,cpu (default: cpu, plus gpu with CUDA)")
    p.add_argument("--concurrency", type=int,
                   help="jobs run at once (default: GPUs × NERN_JOBS_PER_GPU with the gpu queue, else 1)")
    p.add_argument("--data-dir", type=Path, help="NERN_HOME of the embedded deployment")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_guarded(cmd_worker))

    keys = subparsers.add_parser("keys", help="create, revoke and list API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="create a key for a tenant (created if new) and print it")
    p.add_argument("--tenant", required=True)
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=_guarded(cmd_keys_create))
    p = keys.add_parser("revoke", help="revoke a key (the key, or the prefix `keys list` shows)")
    p.add_argument("key")
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=_guarded(cmd_keys_revoke))
    p = keys.add_parser("list", help="list keys (prefix, tenant, created, revoked)")
    p.add_argument("--data-dir", type=Path)
    p.set_defaults(func=_guarded(cmd_keys_list))

    jobs = subparsers.add_parser("jobs", help="submit and follow jobs on a server").add_subparsers(
        dest="jobs_command", required=True
    )
    p = jobs.add_parser("submit", help="submit a checkpoint with fit settings")
    _client_args(p)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="follow progress until the job ends")
    _fit_flags(p)
    p.set_defaults(func=cmd_jobs_submit)
    p = jobs.add_parser("status", help="show a job")
    _client_args(p)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_status)
    p = jobs.add_parser("list", help="list jobs, newest first")
    _client_args(p)
    p.add_argument("--state", action="append", choices=[s.value for s in JobState])
    p.add_argument("--arch")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs_list)
    p = jobs.add_parser("download", help="download artifacts (all, or the one named)")
    _client_args(p)
    p.add_argument("id")
    p.add_argument("name", nargs="?")
    p.add_argument("--out", type=Path, default=Path("."))
    p.set_defaults(func=cmd_jobs_download)
    for verb in ("cancel", "retry"):
        p = jobs.add_parser(verb, help=f"{verb} a job")
        _client_args(p)
        p.add_argument("id")
        p.set_defaults(func=cmd_jobs_cancel if verb == "cancel" else cmd_jobs_retry)

    p = subparsers.add_parser("demo", help="start the embedded service, fit the shipped ResNet20 through it, "
                                           "print the accuracies")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600: a few minutes)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--stop", action="store_true", help="stop the service afterwards instead of leaving it running")
    p.set_defaults(func=cmd_demo)


# ----------------------------------------------------------------------------- helpers


def _fail(msg: str, code: int = 2) -> int:
    msg = " ".join(str(msg).split())  # one line, whatever the message (driver errors span several)
    print(f"nern: error: {msg}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace):
    """Settings from the environment, with --data-dir as NERN_HOME (also for child processes)."""
    from .jobstore.settings import Settings

    if getattr(args, "data_dir", None):
        os.environ["NERN_HOME"] = str(args.data_dir)
    return Settings()


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="API URL (default: $NERN_SERVER or http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="API key (default: $NERN_API_KEY)")


def _client(args: argparse.Namespace) -> NernClient:
    return NernClient(args.server, args.api_key)


def _fit_flags(p: argparse.ArgumentParser) -> None:
    """One flag per spec field, generated as `nern fit` generates its own (`batch_size` → --batch-size)."""
    from nern.cli_options import add_model_flags
    from nern.config import CompressConfig

    from .jobstore.spec import JobSpec

    g = p.add_argument_group("fit settings (the job spec; defaults are the server's)")
    add_model_flags(g, JobSpec, exclude=("name", "compress"))
    g = p.add_argument_group("compression (the spec's `compress`; any of these turns it on)")
    g.add_argument("--compress", dest="compress", type=_json_value, default=argparse.SUPPRESS,
                   metavar="JSON", help='all settings as one JSON object, e.g. \'{"prune": 0.5, "quantize": "int8"}\'')
    add_model_flags(g, CompressConfig, dest_prefix=_COMPRESS_DEST)


_COMPRESS_DEST = "compress."  # argparse dest prefix of the flags of the spec's `compress` object


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _spec_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Path]]:
    from nern.cli_options import model_values
    from nern.config import CompressConfig

    from .jobstore.spec import JobSpec

    spec = model_values(args, JobSpec)
    spec.pop("name", None)
    if "betas" in spec:
        spec["betas"] = list(spec["betas"])
    flags = model_values(args, CompressConfig, dest_prefix=_COMPRESS_DEST)
    if flags:
        base = spec.get("compress")
        # a non-object --compress is left for the server to refuse, not silently replaced
        spec["compress"] = {**base, **flags} if isinstance(base, dict) else flags if base is None else base
    if args.name:
        spec["name"] = args.name
    data_files: dict[str, Path] = {}
    # A local .npz given as data/eval_data travels as an upload part named after the file.
    for key in ("data", "eval_data"):
        value = spec.get(key)
        if isinstance(value, str) and value.endswith(".npz") and Path(value).is_file():
            part = Path(value).name
            data_files[part] = Path(value)
            spec[key] = part
    return spec, data_files


def _describe(job: dict[str, Any]) -> str:
    s = job.get("summary") or {}
    lines = [
        f"job        {job['id']}" + (f"  ({job['name']})" if job.get("name") else ""),
        f"state      {job['state']}  stage {job['stage']}  progress {100 * job['progress']:.0f}%"
        + (f"  step {job['step']}/{job['total_steps']}" if job.get("total_steps") else ""),
        f"arch       {job['arch']}  queue {job['queue']}  attempts {job['attempts']}/{job['max_attempts']}",
        f"created    {job['created_at']}" + (f"  finished {job['finished_at']}" if job.get("finished_at") else ""),
    ]
    if job.get("eta_seconds") is not None and job["state"] == "running":
        lines.append(f"eta        {job['eta_seconds']:.0f} s")
    if s:
        lines.append(
            "top-1      original {} → reconstructed {}  agreement {}".format(
                *(f"{s[k]:.2f}%" if isinstance(s.get(k), int | float) else "–"
                  for k in ("original_top1", "reconstructed_top1", "agreement"))
            )
        )
    c = s.get("compression")
    if isinstance(c, dict) and isinstance(s.get("package_bytes"), int):
        lines.append(f"package    {s['package_bytes']:,} bytes, compressed (prune {c.get('prune')}, "
                     f"{c.get('quantize')}, fine-tuned {c.get('finetune_steps')} steps) from "
                     f"{c.get('source_package_bytes', 0):,}")
    if job.get("error"):
        lines.append(f"error      {job['error']}")
    return "\n".join(lines)


def _progress_printer():
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{desc} {bar} {n:.0f}% [{elapsed}<{remaining}]")

    def update(job: dict[str, Any]) -> None:
        bar.set_description_str(f"{job['state']}/{job['stage']}")
        bar.n = round(100 * job["progress"], 1)
        bar.refresh()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            bar.close()

    return update


def _run_client(args: argparse.Namespace, action) -> int:
    try:
        with _client(args) as client:
            return action(client)
    except ApiError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror or e}")
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


# ----------------------------------------------------------------------------- commands


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        return _fail(f"checkpoint not found: {args.checkpoint}")
    spec, data_files = _spec_from_args(args)

    def act(client: NernClient) -> int:
        job = client.submit(args.checkpoint, spec, data_files=data_files, idempotency_key=args.idempotency_key)
        print(job["id"])
        if not args.wait:
            return 0
        job = client.wait(job["id"], on_update=_progress_printer())
        print(_describe(job))
        return 0 if job["state"] == "succeeded" else _fail(f"job {job['state']}" + (
            f": {job['error']}" if job.get("error") else ""))

    return _run_client(args, act)


def cmd_jobs_status(args: argparse.Namespace) -> int:
    def act(client: NernClient) -> int:
        job = client.job(args.id)
        print(json.dumps(job, indent=2) if args.json else _describe(job))
        return 0

    return _run_client(args, act)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    def act(client: NernClient) -> int:
        page = client.jobs(state=args.state, arch=args.arch, limit=args.limit)
        if args.json:
            print(json.dumps(page, indent=2))
            return 0
        for j in page["items"]:
            print(f"{j['id']}  {j['state']:<9}  {j['stage']:<11} {100 * j['progress']:5.1f}%  "
                  f"{j['arch']:<10} {j['created_at']}  {j.get('name') or ''}")
        if page["next_cursor"]:
            print(f"(more: --limit larger than {args.limit})", file=sys.stderr)
        return 0

    return _run_client(args, act)


def cmd_jobs_download(args: argparse.Namespace) -> int:
    def act(client: NernClient) -> int:
        names = [args.name] if args.name else [a["name"] for a in client.artifacts(args.id)]
        if not names:
            return _fail(f"job {args.id} has no artifacts yet")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(client.download(args.id, name, args.out))
        return 0

    return _run_client(args, act)


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: print(_describe(c.cancel(args.id))) or 0)


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: print(_describe(c.retry(args.id))) or 0)


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
        return _fail("no active key matches")
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
        return _fail(f"unknown queue {bad[0]!r}; queues are gpu and cpu")
    concurrency = args.concurrency
    if concurrency is None:
        from worker.devices import visible_gpus

        gpus = len(visible_gpus()) if "gpu" in queues.split(",") else 0
        concurrency = max(1, gpus * settings.jobs_per_gpu)
    if concurrency < 1:
        return _fail("--concurrency must be at least 1")
    os.environ["NERN_WORKER_QUEUES"] = queues  # for the pool processes' heartbeat rows
    app = make_celery(settings)
    app.worker_main([
        "worker", "-Q", queues, "-c", str(concurrency), "--loglevel", args.loglevel,
        "-n", f"nern-{os.getpid()}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.stop, steps=args.steps, port=args.port)


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
