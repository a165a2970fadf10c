"""`nern serve | worker | keys | jobs | demo` — registered into the `nern` command through the
entry-point group `nern.commands` (pyproject.toml), so the library names nothing of the service.

Every command returns an exit code: 0, or 2 with one line `nern: error: ...` on stderr (130
when interrupted). Errors of the server (`api.client.ApiError`), of the database and of local
files all end that way, never with a traceback.

    cli_local   serve, worker, keys: the deployment on this machine
    cli_jobs    jobs ...: clients of a server's API
    cli_errors  errors as one line and an exit code
"""

from __future__ import annotations

import argparse

from .cli_jobs import register_jobs
from .cli_local import default_queues, register_local

__all__ = ["cmd_demo", "default_queues", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the service's subcommands to the `nern` parser."""
    register_local(subparsers)
    register_jobs(subparsers)
    _register_demo(subparsers)


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="start the embedded service, fit the shipped ResNet20 through it, "
                                           "print the accuracies")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600: a few minutes)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--stop", action="store_true", help="stop the service afterwards instead of leaving it running")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.stop, steps=args.steps, port=args.port)
