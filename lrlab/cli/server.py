"""The server's commands: `lrlab up` (api and a worker on this machine), `api`, `worker`, `keys`, `db upgrade`.

The api and the worker are started by import string (`api.main:app` for uvicorn, `worker.app` for Celery's
`--app`): lrlab imports neither role.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from lrlab.settings import get_settings

log = logging.getLogger("lrlab")

API_APP = "api.main:app"
WORKER_APP = "worker.app"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# `lrlab up` and everything it started are gone this long after a Ctrl-C or SIGTERM; the worker gets what the
# API's shutdown leaves of it (it hands its run back within an epoch, or within HAND_BACK_SECONDS: worker/progress.py).
UP_STOP_SECONDS = 8.5
# Open event streams would hold uvicorn's graceful shutdown forever: they are cut after this.
API_GRACE_SECONDS = 2


def _gpu_present() -> bool:
    # Asked in a child process: the worker's parent must not initialise CUDA before Celery forks.
    probe = "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", probe], timeout=120, capture_output=True).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _migrate_embedded() -> None:
    """The embedded database migrates itself on start; a server database is migrated by `lrlab db upgrade`."""
    settings = get_settings()
    if settings.is_embedded_db:
        from lrlab.migrate import upgrade

        settings.ensure_dirs()
        upgrade()


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from lrlab.migrate import upgrade

    get_settings().ensure_dirs()
    upgrade(revision=args.revision)
    print(f"database at {args.revision}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Celery's own command line, given the worker's app by import string (`celery --app worker.app worker`)."""
    from celery.bin.celery import celery

    from lrlab.broker import GPU_QUEUE

    queues = args.queues or ("gpu,cpu" if _gpu_present() else "cpu")
    if GPU_QUEUE in queues.split(",") and args.queues and not _gpu_present():
        # It would take GPU runs and fail each one (a GPU container started without the NVIDIA runtime, say).
        print(
            "lrlab worker: --queues names the gpu queue, but torch sees no CUDA device here;"
            " start it with --queues cpu, or give the container its GPU (NVIDIA runtime)",
            file=sys.stderr,
        )
        return 2
    pool = args.pool or ("solo" if args.concurrency == 1 else "prefork")
    argv = [
        f"--app={WORKER_APP}",
        "worker",
        f"--queues={queues}",
        f"--concurrency={args.concurrency}",
        f"--pool={pool}",
        f"--loglevel={args.loglevel}",
        f"--hostname=lrlab-{queues.replace(',', '-')}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    celery.main(args=argv, prog_name="lrlab worker", standalone_mode=False)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    _migrate_embedded()
    uvicorn.run(API_APP, host=args.host, port=args.port, log_level=args.loglevel.lower())
    return 0


def _die_with_parent() -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown, so `lrlab up` may end before its `finally`
    # stops the worker: have the kernel send the worker SIGTERM when its parent goes (Linux prctl).
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Up:
    """`lrlab up`'s two processes: the API in this one, the worker in a child that stops with it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.worker: subprocess.Popen[bytes] | None = None
        self.stopping_since: list[float] = []
        self.caught: list[int] = []  # the signals uvicorn handled

    def stop_worker(self) -> None:
        """At the first signal, not after the API's shutdown: the two overlap."""
        if not self.stopping_since:
            self.stopping_since.append(time.monotonic())
            if self.worker is not None and self.worker.poll() is None:
                self.worker.send_signal(signal.SIGTERM)  # warm shutdown: the run in training is handed back

    def interrupted(self, signum: int, frame: Any) -> None:
        # Before uvicorn serves, and after: it raises again the signals it caught once it has shut down (then
        # there is nothing more to interrupt). A signal while the worker stops changes nothing: it has its
        # deadline.
        first = not self.stopping_since
        self.stop_worker()
        if first:
            raise _Interrupted(signum)

    def start_worker(self, data_dir: Any) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "lrlab.cli", "worker", "--concurrency", "1", "--loglevel", self.args.loglevel],
            env={**os.environ, "LRLAB_DATA_DIR": str(data_dir)},
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def serve_api(self) -> int:
        import uvicorn

        up = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                up.caught.append(sig)
                up.stop_worker()
                super().handle_exit(sig, frame)

        config = uvicorn.Config(
            API_APP,
            host=self.args.host,
            port=self.args.port,
            log_level=self.args.loglevel.lower(),
            timeout_graceful_shutdown=API_GRACE_SECONDS,
        )
        Server(config).run()
        return 128 + self.caught[0] if self.caught else 1  # without a signal, the API ended on its own

    def wait_for_worker(self) -> None:
        self.stop_worker()
        if self.worker is None:
            return
        left = self.stopping_since[0] + UP_STOP_SECONDS - time.monotonic()
        try:
            self.worker.wait(timeout=max(left, 0.1))
        except subprocess.TimeoutExpired:
            log.warning("the worker did not stop within %.0f s: killed", UP_STOP_SECONDS)
            self.worker.kill()
            self.worker.wait()


def cmd_up(args: argparse.Namespace) -> int:
    """API and one worker on this machine; with no LRLAB_* URLs set, no servers are needed at all."""
    from lrlab.migrate import upgrade

    up = _Up(args)
    signal.signal(signal.SIGINT, up.interrupted)
    signal.signal(signal.SIGTERM, up.interrupted)
    try:
        # On loopback only this machine's users can call: no keys, unless the environment asks for them.
        if args.host in LOOPBACK:
            os.environ.setdefault("LRLAB_AUTH", "disabled")
        get_settings.cache_clear()
        settings = get_settings()
        settings.ensure_dirs()
        upgrade()
        up.start_worker(settings.data_dir)
        keys = "no API keys (loopback)" if settings.auth == "disabled" else "API keys required (lrlab keys create)"
        print(f"lrlab: data in {settings.data_dir}; API on http://{args.host}:{args.port}/docs; {keys}", flush=True)
        return up.serve_api()
    except _Interrupted as exc:
        return 128 + exc.signum
    finally:
        up.wait_for_worker()


def cmd_keys(args: argparse.Namespace) -> int:
    from lrlab import auth
    from lrlab.db import session_scope

    _migrate_embedded()
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


def add_commands(sub: Any) -> None:
    """up, api, worker, keys and db, on the `lrlab` parser's sub-parsers."""

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
