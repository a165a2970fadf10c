"""`nern jobs submit | status | list | download | cancel | retry`: clients of a server's API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cli_errors import fail
from .client import ApiError, NernClient
from .jobstore.states import JobState


def register_jobs(subparsers: argparse._SubParsersAction) -> None:
    """Add `jobs` and its subcommands (clients of a server's API)."""
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
        return fail(str(e))
    except OSError as e:
        return fail(f"{e.filename or ''}: {e.strerror or e}")
    except KeyboardInterrupt:
        return fail("interrupted", 130)


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        return fail(f"checkpoint not found: {args.checkpoint}")
    spec, data_files = _spec_from_args(args)

    def act(client: NernClient) -> int:
        job = client.submit(args.checkpoint, spec, data_files=data_files, idempotency_key=args.idempotency_key)
        print(job["id"])
        if not args.wait:
            return 0
        job = client.wait(job["id"], on_update=_progress_printer())
        print(_describe(job))
        return 0 if job["state"] == "succeeded" else fail(f"job {job['state']}" + (
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
            return fail(f"job {args.id} has no artifacts yet")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(client.download(args.id, name, args.out))
        return 0

    return _run_client(args, act)


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: print(_describe(c.cancel(args.id))) or 0)


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    return _run_client(args, lambda c: print(_describe(c.retry(args.id))) or 0)
