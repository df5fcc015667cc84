"""Many writers: `--runs` concurrent runs, each reporting one epoch every `--interval` seconds, through the
worker's own progress-writer code (worker/progress.py's ProgressWriter, under a lease) against one Postgres.

Postgres here allows 100 connections, shared with everything else on the machine, so the writers share
connections as they would at scale: `--processes` processes (as worker hosts would be), each with a bounded
SQLAlchemy pool (`--pool` + `--overflow` connections, LRLAB_DB_POOL_SIZE / LRLAB_DB_MAX_OVERFLOW), each holding
its share of the runs' writers as threads. A driver thread per process plays the trainers: writer j hands over
epoch k at start + j/runs * interval + k * interval (the epochs are spread evenly over each interval), with the
time it did so in the point, so the bench can see when that point committed.

For `--seconds` after a `--warmup`, it records:
  offered        points per second the runs hand over (runs / interval)
  committed      points per second that committed in the window
  backlog        points handed over but not committed, sampled each second: flat = keeping up, growing = behind
  latency        hand-over -> commit of each point (p50, p99, max): includes the writer's flush batching
  transaction    one writer transaction, begin -> commit returned (p50, p99, max)
  failed         writers that raised, or gave their run up (`lost`), and why
and afterwards checks every committed point is in curve_point, once.

  python bench/many_writers.py --runs 1000 --processes 4 --pool 8 --overflow 2 --seconds 60
  python bench/many_writers.py --tree /tmp/lrlab-before --tree .       # before and after, one invocation
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import load_average, make_tree, percentile, plain_dsn, private_database  # noqa: E402

SPEC = {"dataset": "blobs", "epochs": 100000, "device": "cpu"}


# --- a child process: one host's share of the writers ------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Runs inside the tree under test (its worker.progress), reports one JSON object on stdout."""
    sys.path.insert(0, os.getcwd())  # the tree under test (the parent starts us there), before this script's own
    from lrlab.db import get_engine
    from worker.progress import ProgressWriter

    runs = json.loads(Path(args.child).read_text())  # [[run_id, token, slot], ...]
    stats_lock = threading.Lock()
    latencies: list[tuple[float, float]] = []  # (put time, seconds to commit)
    transactions: list[tuple[float, float]] = []  # (commit time, seconds)
    committed = Counter[str]()

    import worker.progress as progress

    def record(writer: Any, items: list[Any], t0: float, t1: float) -> None:
        if writer._error is not None or writer.lost.is_set():
            return
        for kind, p in items:
            if kind == "point":
                latencies.append((p["_put"], t1 - p["_put"]))
                committed[writer.run_id] += 1

    if hasattr(progress, "_Hub"):  # one writer thread per process: time its transactions (the class is unchanged)
        hub_transaction = progress._Hub._transaction

        def timed(self: Any, ready: list[Any], rows: list[Any]) -> None:
            t0 = time.time()
            hub_transaction(self, ready, rows)
            t1 = time.time()
            with stats_lock:
                transactions.append((t1, t1 - t0))
                for w, items in ready:
                    record(w, items, t0, t1)

        progress._Hub._transaction = timed  # type: ignore[method-assign]
        writer_class: Any = ProgressWriter
    else:  # a thread and a transaction per run (before issue 15)

        class TimedWriter(ProgressWriter):
            def _write(self, items: list[Any]) -> None:
                t0 = time.time()
                super()._write(items)  # type: ignore[misc]
                t1 = time.time()
                with stats_lock:
                    if self._error is None and not self.lost.is_set():
                        transactions.append((t1, t1 - t0))
                    record(self, items, t0, t1)

        writer_class = TimedWriter

    start, stop = args.start_at, args.start_at + args.warmup + args.seconds
    # As in a worker, the engine exists before any writer: its cached constructor is not safe to race (writers
    # calling it first, all at once, would each build an engine with a pool of its own).
    get_engine()
    writers = [writer_class(run_id, lease_token=token, lease_seconds=args.lease_seconds) for run_id, token, _ in runs]
    failed: dict[str, str] = {}
    put = Counter[str]()
    backlog: list[tuple[float, int]] = []

    def drive() -> None:
        """The trainers: each writer's next epoch at its own offset in the interval, until `stop`."""
        epoch = dict.fromkeys(range(len(writers)), 0)
        next_second = start
        while True:
            now = time.time()
            if now >= stop:
                return
            due = []
            for j, (_, _, slot) in enumerate(runs):
                t = start + slot * args.interval / args.total + epoch[j] * args.interval
                if t <= now:
                    due.append(j)
            for j in due:
                w = writers[j]
                epoch[j] += 1
                if w.run_id in failed:
                    continue
                try:
                    w.put_point(
                        {
                            "epoch": epoch[j],
                            "train_loss": 0.5,
                            "train_accuracy": 0.8,
                            "val_loss": 0.6,
                            "val_accuracy": 0.75,
                            "lr": 1e-3,
                            "seconds": args.interval,
                            "_put": time.time(),
                        }
                    )
                    put[w.run_id] += 1
                except RuntimeError as exc:
                    failed[w.run_id] = repr(exc.__cause__ or exc)[:200]
                if w.lost.is_set() and w.run_id not in failed:
                    failed[w.run_id] = f"lost: {w.lost_reason}"[:200]
            if now >= next_second:
                with stats_lock:
                    done = sum(committed.values())
                backlog.append((now, sum(put.values()) - done))
                next_second += 1.0
            time.sleep(0.005)

    print(json.dumps({"ready": True}), flush=True)
    driver = threading.Thread(target=drive, name="trainers")
    driver.start()
    driver.join()
    closing = time.time()
    for w in writers:
        try:
            w.close()
        except RuntimeError as exc:
            failed.setdefault(w.run_id, repr(exc.__cause__ or exc)[:200])
    print(
        json.dumps(
            {
                "latencies": latencies,
                "transactions": transactions,
                "put": sum(put.values()),
                "committed": sum(committed.values()),
                "backlog": backlog,
                "failed": failed,
                "close_seconds": time.time() - closing,
                "pool": get_engine().pool.status(),
            }
        ),
        flush=True,
    )


# --- the parent: runs, processes, the report -----------------------------------------------------------


def make_runs(dsn: str, n: int) -> list[tuple[str, str]]:
    """n running runs, each under a lease of its own (as if claimed), with no points yet."""
    import psycopg
    from psycopg.types.json import Json

    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        run_id, token = str(uuid.uuid4()), str(uuid.uuid4())
        rows.append((run_id, token, now + timedelta(milliseconds=i), now + timedelta(hours=1)))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO run (id, owner, status, spec, dataset, optimizer, queue, created_at, started_at,"
            " cancel_requested, attempts, lease_token, lease_expires_at)"
            " VALUES (%s, 'local', 'running', %s, 'blobs', 'adam', 'cpu', %s, %s, false, 1, %s, %s)",
            [(r, Json(SPEC), c, c, t, e) for r, t, c, e in rows],
        )
    return [(r, t) for r, t, _, _ in rows]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU seconds of every postgres process on this machine (the server is local: its share is measurable)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except (OSError, ValueError):
                pass
    return total


def xact_commits(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0]) if row else 0


def measure(tree_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    with private_database() as url:
        extra = {
            "LRLAB_DB_POOL_SIZE": str(args.pool),
            "LRLAB_DB_MAX_OVERFLOW": str(args.overflow),
            "LRLAB_DB_POOL_TIMEOUT_SECONDS": str(args.pool_timeout),
        }
        tree = make_tree(tree_path, url, extra)
        tree.run("db", "upgrade")
        dsn = plain_dsn(url)
        runs = make_runs(dsn, args.runs)
        shares = [runs[p :: args.processes] for p in range(args.processes)]
        start_at = time.time() + 8 + args.runs / 200  # after every child has made its writers
        procs = []
        tmp = Path(tree.env["LRLAB_DATA_DIR"])
        for p, share in enumerate(shares):
            slots = [[r, t, i * args.processes + p] for i, (r, t) in enumerate(share)]
            spec = tmp / f"runs-{p}.json"
            spec.write_text(json.dumps(slots))
            cmd = [
                sys.executable,
                str(ROOT / "bench" / "many_writers.py"),
                "--child",
                str(spec),
                "--start-at",
                repr(start_at),
                "--total",
                str(args.runs),
                "--interval",
                str(args.interval),
                "--seconds",
                str(args.seconds),
                "--warmup",
                str(args.warmup),
                "--lease-seconds",
                str(args.lease_seconds),
            ]
            log = (tmp / f"writers-{p}.log").open("wb")
            procs.append(subprocess.Popen(cmd, env=tree.env, cwd=tree.path, stdout=subprocess.PIPE, stderr=log))
        for proc in procs:
            assert proc.stdout is not None
            if not proc.stdout.readline():
                raise RuntimeError(f"a writer process died: see {tmp}/writers-*.log")
        load0 = load_average()
        time.sleep(max(0.0, start_at + args.warmup - time.time()))
        commits0, t0 = xact_commits(dsn), time.time()
        pg0, writers0 = postgres_cpu(), sum(cpu_seconds(p.pid) for p in procs)
        time.sleep(max(0.0, start_at + args.warmup + args.seconds - time.time()))
        commits1, t1 = xact_commits(dsn), time.time()
        pg1, writers1 = postgres_cpu(), sum(cpu_seconds(p.pid) for p in procs)
        load1 = load_average()
        outs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode:
                raise RuntimeError(f"a writer process failed: see {tmp}/writers-*.log")
            outs.append(json.loads(out.decode().strip().splitlines()[-1]))
        import psycopg

        with psycopg.connect(dsn) as conn:
            stored, dupes = conn.execute(
                "SELECT count(*), count(*) - count(DISTINCT (run_id, epoch)) FROM curve_point"
            ).fetchone()  # type: ignore[misc]
    window = (start_at + args.warmup, start_at + args.warmup + args.seconds)
    lat = [s for o in outs for put, s in o["latencies"] if window[0] <= put < window[1]]
    tx = [s for o in outs for at, s in o["transactions"] if window[0] <= at < window[1]]
    in_window = [put + s for o in outs for put, s in o["latencies"] if window[0] <= put + s < window[1]]
    failed = {r: why for o in outs for r, why in o["failed"].items()}
    backlog: dict[int, int] = {}
    for o in outs:
        for at, n in o["backlog"]:
            second = int(at - start_at)
            backlog[second] = backlog.get(second, 0) + n
    steady = [n for s, n in sorted(backlog.items()) if args.warmup <= s < args.warmup + args.seconds]
    return {
        "tree": tree.name,
        "offered": args.runs / args.interval,
        "committed_per_s": len(in_window) / args.seconds,
        "points_put": sum(o["put"] for o in outs),
        "points_committed": sum(o["committed"] for o in outs),
        "points_stored": stored,
        "duplicates": dupes,
        "latency": (percentile(lat, 0.5), percentile(lat, 0.99), max(lat, default=float("nan"))),
        "transaction": (percentile(tx, 0.5), percentile(tx, 0.99), max(tx, default=float("nan"))),
        "transactions_per_s": len(tx) / args.seconds,
        "pg_commits_per_s": (commits1 - commits0) / (t1 - t0),
        "postgres_cpu": (pg1 - pg0) / (t1 - t0),  # cores busy (every postgres process of the machine)
        "writers_cpu": (writers1 - writers0) / (t1 - t0),
        "backlog": (steady[0] if steady else None, max(steady, default=None), steady[-1] if steady else None),
        "failed": len(failed),
        "failed_why": Counter(why.split("(")[0].split(":")[0] for why in failed.values()).most_common(3),
        "close_seconds": max(o["close_seconds"] for o in outs),
        "pools": [o.get("pool") for o in outs],
        "load": (load0, load1),
    }


def fmt_ms(triple: tuple[float, float, float]) -> str:
    return " / ".join(f"{v * 1000:.0f}" for v in triple)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, action="append", help="a checkout to measure (repeat; default: this one)")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between two epochs of a run")
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--pool", type=int, default=8, help="pooled connections per process")
    ap.add_argument("--overflow", type=int, default=2, help="extra connections per process under load")
    ap.add_argument("--pool-timeout", type=float, default=30.0)
    ap.add_argument("--lease-seconds", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds before the window (ramp-up)")
    ap.add_argument("--json", type=Path)
    # a child process (internal)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    results = [measure(p, args) for p in (args.tree or [ROOT])]
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Postgres (max_connections 100);"
        f" {args.runs} runs x 1 epoch / {args.interval:g} s, {args.processes} processes x"
        f" ({args.pool} + {args.overflow}) connections; {args.seconds:g} s window after {args.warmup:g} s\n"
    )
    print(
        "| tree | offered pts/s | committed pts/s | backlog first / max / last | latency p50 / p99 / max ms"
        " | transaction p50 / p99 / max ms | tx/s | postgres CPU | writers' CPU | failed writers | stored = committed"
        " | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ok = "yes" if r["points_stored"] == r["points_committed"] and not r["duplicates"] else "NO"
        why = f" ({', '.join(f'{w}: {n}' for w, n in r['failed_why'])})" if r["failed"] else ""
        print(
            f"| {r['tree']} | {r['offered']:.0f} | {r['committed_per_s']:.0f} | {r['backlog']} |"
            f" {fmt_ms(r['latency'])} | {fmt_ms(r['transaction'])} | {r['transactions_per_s']:.0f} |"
            f" {r['postgres_cpu']:.2f} core | {r['writers_cpu']:.2f} core |"
            f" {r['failed']}{why} | {ok} | {r['load'][0]:.1f}-{r['load'][1]:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
