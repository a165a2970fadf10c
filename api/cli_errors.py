"""How the service's `nern` commands end on an error: exit code 2 with one line
`nern: error: ...` on stderr (130 when interrupted), never a traceback."""

from __future__ import annotations

import argparse
import sys


def guarded(func):
    """Database and file errors of a local command (serve, worker, keys) as one error line."""

    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            return func(args)
        except SQLAlchemyError as e:
            return fail(f"database: {type(e).__name__}: {str(e.orig if getattr(e, 'orig', None) else e)[:300]}")
        except OSError as e:
            return fail(f"{e.filename or ''}: {e.strerror or e}")
        except KeyboardInterrupt:
            return fail("interrupted", 130)

    run.__name__ = func.__name__
    return run


def fail(msg: str, code: int = 2) -> int:
    msg = " ".join(str(msg).split())  # one line, whatever the message (driver errors span several)
    print(f"nern: error: {msg}", file=sys.stderr)
    return code
