"""The `lrlab` command: run the embedded service, the api, a worker, or migrate the database."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from lrlab.settings import get_settings

log = logging.getLogger("lrlab")


def _gpu_present() -> bool:
    # Asked in a child process: the worker's parent must not initialise CUDA before Celery forks.
    probe = "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], timeout=120, capture_output=True).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from lrlab.migrate import upgrade

    get_settings().ensure_dirs()
    upgrade(revision=args.revision)
    print(f"database at {args.revision}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    queues = args.queues or ("gpu,cpu" if _gpu_present() else "cpu")
    pool = args.pool or ("solo" if args.concurrency == 1 else "prefork")
    from worker.app import app

    argv = [
        "worker",
        f"--queues={queues}",
        f"--concurrency={args.concurrency}",
        f"--pool={pool}",
        f"--loglevel={args.loglevel}",
        f"--hostname=lrlab-{queues.replace(',', '-')}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    if settings.is_embedded_db:
        from lrlab.migrate import upgrade

        settings.ensure_dirs()
        upgrade()
    uvicorn.run("api.main:app", host=args.host, port=args.port, log_level=args.loglevel.lower())
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_up(args: argparse.Namespace) -> int:
    """API and one worker on this machine; with no LRLAB_* URLs set, no servers are needed at all."""
    import uvicorn

    from lrlab.migrate import upgrade

    # On loopback only this machine's users can call: no keys, unless the environment asks for them.
    if args.host in LOOPBACK:
        os.environ.setdefault("LRLAB_AUTH", "disabled")
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_dirs()
    upgrade()
    worker = subprocess.Popen(
        [sys.executable, "-m", "lrlab.cli", "worker", "--concurrency", "1", "--loglevel", args.loglevel],
        env={**os.environ, "LRLAB_DATA_DIR": str(settings.data_dir)},
    )
    keys = "no API keys (loopback)" if settings.auth == "disabled" else "API keys required (lrlab keys create)"
    print(f"lrlab: data in {settings.data_dir}; API on http://{args.host}:{args.port}/docs; {keys}", flush=True)
    try:
        uvicorn.run("api.main:app", host=args.host, port=args.port, log_level=args.loglevel.lower())
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from lrlab import auth
    from lrlab.db import session_scope
    from lrlab.migrate import upgrade

    settings = get_settings()
    if settings.is_embedded_db:
        settings.ensure_dirs()
        upgrade()
    with session_scope() as session:
        if args.keys_command == "create":
            row, plain = auth.create_key(session, args.name)
            print(f"created key {row.id} ({row.name}); it is shown once, keep it:")
            print(plain)
        elif args.keys_command == "list":
            for row in auth.list_keys(session):
                state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
                print(f"{row.id}  {row.prefix}...  {row.name}  created {row.created_at:%Y-%m-%d %H:%M}  {state}")
        else:
            n = auth.revoke_key(session, args.key)
            if not n:
                print(f"no active key {args.key}", file=sys.stderr)
                return 1
            print(f"revoked {n} key(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def served(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--loglevel", default="INFO")

    up = sub.add_parser("up", help="API and a worker on this machine (embedded default: no servers).")
    served(up)
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="Serve the HTTP API.")
    served(api)
    api.set_defaults(func=cmd_api)

    wk = sub.add_parser("worker", help="Run a Celery worker.")
    wk.add_argument("--queues", help="Comma-separated; default gpu,cpu with a GPU, else cpu.")
    wk.add_argument("--concurrency", type=int, default=1)
    wk.add_argument("--pool", choices=["solo", "prefork", "threads"], help="Default solo for 1, else prefork.")
    wk.add_argument("--loglevel", default="INFO")
    wk.set_defaults(func=cmd_worker)

    keys = sub.add_parser("keys", help="API keys: each key is its own owner.")
    keysub = keys.add_subparsers(dest="keys_command", required=True)
    kc = keysub.add_parser("create", help="Make a key; the key is printed as the last line.")
    kc.add_argument("--name", required=True)
    keysub.add_parser("list", help="Every key: id, prefix, name, state.")
    kr = keysub.add_parser("revoke", help="Revoke a key by id or name.")
    kr.add_argument("key")
    keys.set_defaults(func=cmd_keys)

    db = sub.add_parser("db", help="Database schema (Alembic).")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up_db = dbsub.add_parser("upgrade", help="Migrate to the newest schema.")
    up_db.add_argument("revision", nargs="?", default="head")
    up_db.set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "loglevel", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
