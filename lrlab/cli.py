"""The `lrlab` command: run the embedded service, the api, a worker, or migrate the database."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

# Exit statuses: 1 a run (or population) ended failed; 2 refused (bad input, an unknown id, a 4xx);
# 3 the service (or, for server commands, the database) could not be reached.
EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE = 1, 2, 3


def _die_with_parent() -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown, so `lrlab up` may end before its `finally`
    # stops the worker: have the kernel send the worker SIGTERM when its parent goes (Linux prctl).
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# `lrlab up` and everything it started are gone this long after a Ctrl-C or SIGTERM; the worker gets what the
# API's shutdown leaves of it (it hands its run back within an epoch, or within HAND_BACK_SECONDS: worker/progress.py).
UP_STOP_SECONDS = 8.5
# Open event streams would hold uvicorn's graceful shutdown forever: they are cut after this.
API_GRACE_SECONDS = 2


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def cmd_up(args: argparse.Namespace) -> int:
    """API and one worker on this machine; with no LRLAB_* URLs set, no servers are needed at all."""
    import uvicorn

    from lrlab.migrate import upgrade

    worker: subprocess.Popen[bytes] | None = None
    stopping_since: list[float] = []
    caught: list[int] = []  # the signals uvicorn handled

    def stop_worker() -> None:  # at the first signal, not after the API's shutdown: the two overlap
        if not stopping_since:
            stopping_since.append(time.monotonic())
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)  # warm shutdown: the run in training is handed back

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            caught.append(sig)
            stop_worker()
            super().handle_exit(sig, frame)

    def interrupted(signum: int, frame: Any) -> None:
        # Before uvicorn serves, and after: it raises again the signals it caught once it has shut down (then
        # there is nothing more to interrupt). A signal while the worker stops changes nothing: it has its
        # deadline.
        first = not stopping_since
        stop_worker()
        if first:
            raise _Interrupted(signum)

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
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
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        keys = "no API keys (loopback)" if settings.auth == "disabled" else "API keys required (lrlab keys create)"
        print(f"lrlab: data in {settings.data_dir}; API on http://{args.host}:{args.port}/docs; {keys}", flush=True)
        config = uvicorn.Config(
            "api.main:app",
            host=args.host,
            port=args.port,
            log_level=args.loglevel.lower(),
            timeout_graceful_shutdown=API_GRACE_SECONDS,
        )
        Server(config).run()
        return 128 + caught[0] if caught else 1  # without a signal, the API ended on its own
    except _Interrupted as exc:
        return 128 + exc.signum
    finally:
        stop_worker()
        if worker is not None:
            left = stopping_since[0] + UP_STOP_SECONDS - time.monotonic()
            try:
                worker.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                log.warning("the worker did not stop within %.0f s: killed", UP_STOP_SECONDS)
                worker.kill()
                worker.wait()


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


# --- client commands: they speak HTTP through lrlab.client, like any user's script ---------------------


def _client(args: argparse.Namespace) -> Any:
    from lrlab.client import Client

    return Client(args.url, args.key)


def _say(line: str) -> None:
    """Prose for people, on stderr: stdout carries only what a script reads (ids, tables, JSON)."""
    print(line, file=sys.stderr, flush=True)


class CliError(Exception):
    """A failure the command explains in one line on stderr, exiting with `code`."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def _read_json_object(file: str) -> dict[str, Any]:
    """The JSON object in `file` (- for stdin); a CliError that names the file and the problem otherwise."""
    name = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{name}: no such file") from None
    except UnicodeDecodeError:
        raise CliError(f"{name}: not UTF-8 text") from None
    except OSError as exc:
        raise CliError(f"{name}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(value, dict):
        raise CliError(f"{name} must hold a JSON object ({{...}}), not {type(value).__name__}")
    return value


def _spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec = _read_json_object(args.file) if args.file else {}
    if "pbt_id" in spec and isinstance(spec.get("run"), dict):  # `lrlab pbt schedule ID | lrlab submit -`
        spec = dict(spec["run"])
    optimizer = dict(spec.get("optimizer") or {})
    if args.optimizer:
        optimizer = {"name": args.optimizer}
    if args.lr is not None:
        optimizer.setdefault("name", "adam")
        optimizer["lr"] = args.lr
    if optimizer:
        spec["optimizer"] = optimizer
    for field in ("dataset", "model", "epochs", "batch_size", "seed", "device"):
        value = getattr(args, field)
        if value is not None:
            spec[field] = value
    return spec


def cmd_submit(args: argparse.Namespace) -> int:
    """A run spec (file, - for stdin, or flags), or an experiment when the file has a `grid`.

    Prints the id alone on stdout (ID=$(lrlab submit ...)); what it is and, with --wait, how it ended, on stderr.
    """
    lab = _client(args)
    body = _spec_from_args(args)
    if "grid" in body:
        experiment = lab.submit_experiment(body)
        _say(f"experiment {experiment.id}: {len(experiment.runs)} runs")
        submitted, ids = experiment.id, experiment.runs
    else:
        run = lab.submit_run(body)
        _say(f"run {run.id} {run.status.value}")
        submitted, ids = run.id, [run.id]
    print(submitted, flush=True)
    if args.wait:
        runs = lab.wait(ids, poll=args.poll, progress=False)
        for r in runs:
            best = r.summary.best_val_accuracy if r.summary else None
            _say(f"{r.id} {r.status.value} best_val_accuracy={best}")
        return 0 if all(r.status.value in ("succeeded", "diverged") for r in runs) else EXIT_FAILED
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Redraw one progress line per run until it finishes."""
    lab = _client(args)
    while True:
        run = lab.run(args.run_id)
        line = lab.progress_line(run)
        end = "\n" if run.status.value in ("succeeded", "failed", "cancelled", "diverged") else ""
        print("\r" + line.ljust(100), end=end, flush=True)
        if end:
            return 0 if run.status.value != "failed" else 1
        time.sleep(args.poll)


def cmd_compare(args: argparse.Namespace) -> int:
    lab = _client(args)
    cmp = lab.compare(experiment_id=args.experiment_id, metric=args.metric, target=args.target)
    cols = ("label", "status", "best_val_acc", "epoch", "min_val_loss", "to_target", "seconds")
    rows = []
    for r in cmp.runs:
        s = r.summary
        rows.append(
            (
                r.label or r.run_id[:8],
                r.status.value + (f"@{s.diverged_at}" if s and s.diverged_at else ""),
                f"{s.best_val_accuracy:.4f}" if s and s.best_val_accuracy is not None else "-",
                str(s.best_epoch) if s and s.best_epoch else "-",
                f"{s.min_val_loss:.4f}" if s and s.min_val_loss is not None else "-",
                str(s.epochs_to_target) if s and s.epochs_to_target else "-",
                f"{s.seconds:.1f}" if s else "-",
            )
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    if cmp.verdict is not None:
        v = cmp.verdict
        ci = f"[{v.ci_low:.4f}, {v.ci_high:.4f}]" if v.ci_low is not None and v.ci_high is not None else "n/a"
        print(
            f"verdict: {v.better} vs {v.other}: {v.difference}, {v.confidence:.0%} CI {ci}, significant={v.significant}"
        )
    if args.chart:
        lab.save_chart(args.experiment_id, args.chart_metric, args.chart)
        print(f"saved {args.chart}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    lab = _client(args)
    page = lab.runs(status=args.status, limit=args.limit)
    for r in page.data:
        best = r.summary.best_val_accuracy if r.summary and r.summary.best_val_accuracy is not None else None
        acc = f"{best:.4f}" if best is not None else "-"
        label = r.label or f"{r.spec.optimizer.name} lr={r.spec.optimizer.lr:g}"
        print(f"{r.id[:8]}  {r.status.value:<9}  {acc:<6}  {r.created_at:%Y-%m-%d %H:%M:%S}  {label}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = _client(args).cancel(args.run_id)
    print(f"{run.id} {run.status.value}{' (stops at the end of its epoch)' if run.status.value == 'running' else ''}")
    return 0


def cmd_pbt_submit(args: argparse.Namespace) -> int:
    """A population (PbtCreate JSON, - for stdin); prints its id alone on stdout, its size on stderr."""
    created = _client(args).submit_pbt(_read_json_object(args.file))
    _say(f"population {created.id}: {len(created.runs)} members")
    print(created.id, flush=True)
    return 0


def cmd_pbt_watch(args: argparse.Namespace) -> int:
    """A progress line whenever the population moves and each round's exploits, then the best member and the
    lr schedule its weights were trained with (inherited history included)."""
    lab = _client(args)
    shown, events = None, 0
    while True:
        pbt = lab.pbt(args.pbt_id)
        for e in pbt.lineage[events:]:  # ordered by epoch: a new round only appends
            changes = ", ".join(
                f"{k} {_num(e.old.get(k))} -> {_num(v)}{' (resampled)' if k in e.resampled else ''}"
                for k, v in e.new.items()
            )
            print(f"  after epoch {e.epoch}: member {e.target} <- member {e.source}  {changes}")
        events = len(pbt.lineage)
        line = lab.pbt_progress_line(pbt)
        if line != shown:
            print(line, flush=True)
            shown = line
        if pbt.status.is_finished():
            break
        time.sleep(args.poll)
    if pbt.error:
        print(f"error: {pbt.error}")
    best = pbt.best
    if best is None:
        print("no best member: no interval finished")
    else:
        also = ""
        if pbt.spec.metric != "val_accuracy" and best.val_accuracy is not None:
            also = f" val_accuracy {best.val_accuracy:.4f}"
        score = f"{pbt.spec.metric} {best.score:.4f}{also}"
        print(f"best: member {best.member} (run {best.run_id}) {score} at epoch {best.epoch}")
        print("lr schedule (the weights' whole history):")
        base_lr = pbt.spec.base.optimizer.lr
        segments: list[tuple[int, int, int, Any]] = []  # (first epoch, last epoch, member, lr)
        for f in best.schedule:
            lr = f.values.get("lr", base_lr)
            if segments and segments[-1][2:] == (f.member, lr):
                segments[-1] = (segments[-1][0], f.epoch, f.member, lr)
            else:
                segments.append((f.epoch, f.epoch, f.member, lr))
        for first, last, member, lr in segments:
            print(f"  epochs {first}-{last}  lr {_num(lr)}  (as member {member})")
        print(f"replay it: lrlab pbt schedule {pbt.id} | lrlab submit -")
    return 0 if pbt.status.value != "failed" else 1


def cmd_pbt_schedule(args: argparse.Namespace) -> int:
    """The discovered schedule as JSON: its `run` is a run spec (`lrlab submit -` takes the whole document)."""
    found = _client(args).pbt_schedule(args.pbt_id)
    print(json.dumps(found.model_dump(mode="json"), indent=2))
    return 0


def cmd_pbt_list(args: argparse.Namespace) -> int:
    for p in _client(args).pbts(limit=args.limit).data:
        best = f"member {p.best.member} {p.spec.metric} {p.best.score:.4f}" if p.best else "-"
        searched = ",".join(p.spec.mutations)
        print(
            f"{p.id[:8]}  {p.status.value:<9}  {p.epochs_completed:>4}/{p.spec.epochs:<4}"
            f"  {p.spec.population} x {searched}  {p.created_at:%Y-%m-%d %H:%M:%S}  {p.name}  {best}"
        )
    return 0


def cmd_pbt_cancel(args: argparse.Namespace) -> int:
    pbt = _client(args).cancel_pbt(args.pbt_id)
    training = sum(m.status.value == "running" for m in pbt.members)
    print(f"{pbt.id} {pbt.status.value}{f' ({training} members stop at the end of their epoch)' if training else ''}")
    return 0


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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

    def remote(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", default=None, help="API address (default $LRLAB_URL or http://127.0.0.1:8000)")
        p.add_argument("--key", default=None, help="API key (default $LRLAB_API_KEY)")
        p.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
        return p

    sm = remote(sub.add_parser("submit", help="Submit a run (or an experiment: a file with a `grid`)."))
    sm.add_argument("file", nargs="?", help="JSON spec file, or - for stdin")
    sm.add_argument("--dataset")
    sm.add_argument("--model")
    sm.add_argument("--optimizer")
    sm.add_argument("--lr", type=float)
    sm.add_argument("--epochs", type=int)
    sm.add_argument("--batch-size", dest="batch_size", type=int)
    sm.add_argument("--seed", type=int)
    sm.add_argument("--device", choices=["auto", "cpu", "cuda"])
    sm.add_argument("--wait", action="store_true", help="wait until finished; exit 1 if a run failed")
    sm.set_defaults(func=cmd_submit)
    wt = remote(sub.add_parser("watch", help="A live progress line for a run."))
    wt.add_argument("run_id")
    wt.set_defaults(func=cmd_watch)
    cp = remote(sub.add_parser("compare", help="A table of an experiment's runs, best first."))
    cp.add_argument("experiment_id")
    cp.add_argument("--metric", default="best_val_accuracy")
    cp.add_argument("--target", type=float)
    cp.add_argument("--chart", help="also save a chart (.png or .svg)")
    cp.add_argument("--chart-metric", default="val_accuracy")
    cp.set_defaults(func=cmd_compare)
    rn = remote(sub.add_parser("runs", help="Recent runs, newest first."))
    rn.add_argument("--status")
    rn.add_argument("--limit", type=int, default=20)
    rn.set_defaults(func=cmd_runs)
    cn = remote(sub.add_parser("cancel", help="Cancel a run."))
    cn.add_argument("run_id")
    cn.set_defaults(func=cmd_cancel)

    pbt = sub.add_parser("pbt", help="Population based training: submit, watch, the discovered schedule.")
    pbtsub = pbt.add_subparsers(dest="pbt_command", required=True)
    ps = remote(pbtsub.add_parser("submit", help="Submit a population; prints its id."))
    ps.add_argument("file", help="JSON population (POST /v1/pbt body), or - for stdin")
    ps.set_defaults(func=cmd_pbt_submit)
    pw = remote(pbtsub.add_parser("watch", help="Progress per round until finished; the best member's schedule."))
    pw.add_argument("pbt_id")
    pw.set_defaults(func=cmd_pbt_watch)
    pd = remote(pbtsub.add_parser("schedule", help="The discovered schedule as JSON (pipe it to `lrlab submit -`)."))
    pd.add_argument("pbt_id")
    pd.set_defaults(func=cmd_pbt_schedule)
    pl = remote(pbtsub.add_parser("list", help="Recent populations: status, epochs, what they search, the best."))
    pl.add_argument("--limit", type=int, default=20)
    pl.set_defaults(func=cmd_pbt_list)
    pc = remote(pbtsub.add_parser("cancel", help="Cancel a population (training members stop after their epoch)."))
    pc.add_argument("pbt_id")
    pc.set_defaults(func=cmd_pbt_cancel)

    db = sub.add_parser("db", help="Database schema (Alembic).")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    up_db = dbsub.add_parser("upgrade", help="Migrate to the newest schema.")
    up_db.add_argument("revision", nargs="?", default="head")
    up_db.set_defaults(func=cmd_db_upgrade)
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


if __name__ == "__main__":
    sys.exit(main())
