"""The `lrlab` command: run the embedded service, the api, a worker, or migrate the database (server.py); submit
and follow runs, grids and populations over HTTP (remote.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from lrlab.cli import remote, server
from lrlab.cli.exits import EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, CliError
from lrlab.settings import get_settings

DESCRIPTION = "The `lrlab` command: run the embedded service, the api, a worker, or migrate the database."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrlab", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    server.add_commands(sub)
    remote.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lrlab.logs import configure

    # LRLAB_LOG_FORMAT=json: one JSON object per line, with the run id of the task that logged it
    configure(getattr(args, "loglevel", "INFO"), get_settings().log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the client commands' output
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin, on every import
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C on watch or --wait: the run goes on; nothing to explain
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lrlab runs | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        explained = _explain(exc, args)
        if explained is None:
            raise
        command = " ".join(filter(None, [args.command, getattr(args, f"{args.command}_command", None)]))
        print(f"lrlab {command}: error: {explained.args[0]}", file=sys.stderr)
        return explained.code


def _explain(exc: Exception, args: argparse.Namespace) -> CliError | None:
    """One line for what a user can meet and act on; None for a bug, which keeps its traceback."""
    if isinstance(exc, CliError):
        return exc
    if "httpx" in sys.modules:  # a client command: the service refused, or could not be reached
        import httpx

        from lrlab.client import ApiError

        url = getattr(args, "url", None) or os.environ.get("LRLAB_URL") or "http://127.0.0.1:8000"
        if isinstance(exc, ApiError):
            return CliError(str(exc), EXIT_REFUSED)
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            hint = "start it with `lrlab up`, or point LRLAB_URL (or --url) at a running one"
            return CliError(f"no lrlab API at {url} ({_reason(exc)}): {hint}", EXIT_UNREACHABLE)
        if isinstance(exc, httpx.TimeoutException):
            return CliError(f"the lrlab API at {url} did not answer in time ({_reason(exc)})", EXIT_UNREACHABLE)
        if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
            return CliError(f"the lrlab API at {url}: {_reason(exc)}", EXIT_UNREACHABLE)
    if "sqlalchemy" in sys.modules:  # a server command (keys, db): its database
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            from sqlalchemy.engine import make_url

            where = make_url(get_settings().database_url).render_as_string(hide_password=True)
            return CliError(f"the database at {where} is unreachable ({_reason(exc.orig)})", EXIT_UNREACHABLE)
    return None


def _reason(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
