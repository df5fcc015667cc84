"""Chaos: SIGKILL workers at random while runs train, then count what was lost or done twice.

Starts K workers on a private queue against a private Postgres database and a free Redis db number,
submits N runs, and M times SIGKILLs a random worker (one that is training, when any is) and starts a
replacement. P times it instead SIGSTOPs a worker for longer than a lease and then SIGCONTs it: its run
is requeued and resumed elsewhere meanwhile, and the woken worker must notice and write nothing more.
When every run has finished it reports, from the database and the workers' logs:

  runs finished      by status; succeeded is the only right answer here
  resumed            runs with attempts > 1 (a lease expired, the run was requeued and resumed)
  epochs duplicated  (run, epoch) rows beyond one each (the primary key makes this impossible)
  epochs lost        epochs of 1..epochs missing from a succeeded run's curve
  outcomes recorded  "run <id> <status> after" lines in the workers' logs, per run: exactly one each
  stale writers      woken workers whose progress writer found its lease gone and stopped writing
  equal to clean     with --verify, each resumed run's curve against the same spec trained without
                     interruption in this process (train/val numbers and lr; wall seconds ignored)

  python bench/chaos.py                                   # 3 workers, 12 runs x 30 epochs, 8 kills, 3 pauses
  python bench/chaos.py --workers 3 --runs 12 --epochs 30 --kills 8 --pauses 3 --verify --seed 1

Needs Postgres and Redis on localhost (LRLAB_TEST_PG, LRLAB_TEST_REDIS as in tests/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

PG_ADMIN_URL = os.environ.get("LRLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("LRLAB_TEST_REDIS", "redis://127.0.0.1:6379")
QUEUE = "chaos"


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lrlab.cli", "worker", "--queues", QUEUE, "--loglevel", "INFO"],
            env=env,
            cwd=ROOT,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # cmd_worker names the node lrlab-<queues>-<its pid>@host, and runs record that name
        self.prefix = f"lrlab-{QUEUE}-{self.proc.pid}@"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        self.kill()


def claim_redis_db() -> tuple[int, str]:
    admin = redis.Redis.from_url(f"{REDIS_HOST}/0")
    token = uuid.uuid4().hex
    for db in range(1, 16):
        if admin.set(f"lrlab-test-lock:{db}", token, nx=True, ex=3600):
            redis.Redis.from_url(f"{REDIS_HOST}/{db}").flushdb()
            return db, token
    raise RuntimeError("no free Redis db number")


def release_redis_db(db: int, token: str) -> None:
    redis.Redis.from_url(f"{REDIS_HOST}/{db}").flushdb()
    admin = redis.Redis.from_url(f"{REDIS_HOST}/0")
    if admin.get(f"lrlab-test-lock:{db}") == token.encode():
        admin.delete(f"lrlab-test-lock:{db}")


def running_on(prefix: str) -> list[str]:
    from sqlalchemy import select

    from lrlab.db import session_scope
    from lrlab.models import Run

    with session_scope() as s:
        return list(s.scalars(select(Run.id).where(Run.status == "running", Run.worker.startswith(prefix))))


def all_finished(ids: list[str]) -> bool:
    from sqlalchemy import func, select

    from lrlab.db import session_scope
    from lrlab.models import Run

    with session_scope() as s:
        pending = s.scalar(select(func.count()).where(Run.id.in_(ids), Run.status.in_(("queued", "running"))))
    return pending == 0


def clean_curve(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    import trainer
    from lrlab.runs.store import point_row

    torch.set_num_threads(1)  # as on the workers
    result = trainer.train(trainer.RunConfig.from_spec(spec), device="cpu")
    return [{k: v for k, v in point_row("", vars(p)).items() if k not in ("run_id", "seconds")} for p in result.points]


def report(
    args: argparse.Namespace, ids: list[str], logs: list[Path], kills: list[int], pauses: list[int], seconds: float
) -> str:
    from sqlalchemy import func, select

    from lrlab.db import session_scope
    from lrlab.models import CurvePoint, Run
    from lrlab.runs import store

    with session_scope() as s:
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_(ids)))}
        dup_rows = s.execute(
            select(CurvePoint.run_id, CurvePoint.epoch, func.count())
            .where(CurvePoint.run_id.in_(ids))
            .group_by(CurvePoint.run_id, CurvePoint.epoch)
            .having(func.count() > 1)
        ).all()
        curves = {r: store.points(s, r) for r in ids}
    statuses = Counter(r.status for r in runs.values())
    expected = list(range(1, args.epochs + 1))
    lost = {r: sorted(set(expected) - {p["epoch"] for p in curves[r]}) for r in ids if runs[r].status == "succeeded"}
    extra = {r: [p["epoch"] for p in curves[r] if p["epoch"] not in expected] for r in ids}
    text = "".join(log.read_text(errors="replace") for log in logs)
    outcomes = Counter(m.group(1) for m in re.finditer(r"run ([0-9a-f-]{36}) \w+ after \d+ epochs", text))
    resumed = [r for r in ids if runs[r].attempts > 1]
    passes = re.findall(r"reconciled: (.*)", text)
    requeued = sum(int(n) for p in passes for n in re.findall(r"^requeued (\d+)", p))
    sent = sum(int(n) for p in passes for n in re.findall(r"\bdispatched (\d+)", p))
    lines = [
        f"machine: {platform.machine()} {os.cpu_count()}-core, Python {platform.python_version()}, {date.today()}",
        f"workers {args.workers}, runs {args.runs} x {args.epochs} epochs ({args.dataset}, batch {args.batch_size}),"
        f" kills {len(kills)} (of which {sum(1 for k in kills if k)} interrupted a run),"
        f" pauses {len(pauses)} (of which {sum(1 for p in pauses if p)} held a run), seed {args.seed}",
        f"lease {args.lease_seconds:g} s, reconcile every 0.5 s, redispatch after {args.redispatch_seconds:g} s,"
        " checkpoint every epoch",
        f"wall time: {seconds:.1f} s",
        f"runs finished: {len(runs)}/{len(ids)} {dict(statuses)}",
        f"resumed (attempts > 1): {len(resumed)}; attempts: {dict(Counter(r.attempts for r in runs.values()))}",
        f"epochs duplicated: {sum(c - 1 for *_, c in dup_rows)}",
        f"epochs lost: {sum(len(v) for v in lost.values())}",
        f"epochs outside 1..{args.epochs}: {sum(len(v) for v in extra.values())}",
        f"outcomes recorded per run: {dict(Counter(outcomes[r] for r in ids))} (1 each is right)",
        f"stale writers that found their lease gone and stopped: {text.count('writes nothing more for it')}",
        f"resumes from a checkpoint: {len(re.findall(r'resumes after epoch', text))}"
        f" (the others were killed before their first epoch ended)",
        f"reconcilers requeued {requeued} runs and sent {sent} messages (the others: runs queued longer than"
        f" redispatch_seconds); messages dropped at the claim as duplicates: {text.count('not queued any more')}",
    ]
    if args.verify:
        strip = [[{k: v for k, v in p.items() if k != "seconds"} for p in curves[r]] for r in resumed]
        equal = sum(got == clean_curve(runs[r].spec) for r, got in zip(resumed, strip, strict=True))
        lines.append(f"resumed curves equal to a clean re-run: {equal}/{len(resumed)}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--pauses", type=int, default=3, help="SIGSTOP a worker for lease + 3 s, then SIGCONT")
    ap.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 6.0), help="seconds, uniform between")
    ap.add_argument("--lease-seconds", type=float, default=3.0)
    ap.add_argument(
        "--redispatch-seconds",
        type=float,
        default=20.0,
        help="a message handed to a worker killed before it claimed the run is sent again after this long",
    )
    ap.add_argument("--timeout", type=float, default=170.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", action="store_true", help="compare resumed curves with clean re-runs")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="lrlab-chaos-"))
    db_name = f"lrlab_chaos_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    redis_db, token = claim_redis_db()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    env.update(
        {
            "LRLAB_DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            + f"/{db_name}",
            "LRLAB_BROKER_URL": f"{REDIS_HOST}/{redis_db}",
            "LRLAB_DATA_DIR": str(tmp),
            "LRLAB_LEASE_SECONDS": str(args.lease_seconds),
            "LRLAB_RECONCILE_SECONDS": "0.5",
            "LRLAB_REDISPATCH_SECONDS": str(args.redispatch_seconds),
            "LRLAB_CHECKPOINT_SECONDS": "0",
            "LRLAB_HEARTBEAT_SECONDS": "1",
        }
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("LRLAB_")})
    workers: list[Worker] = []
    logs: list[Path] = []
    try:
        from lrlab import outbox
        from lrlab.db import session_scope
        from lrlab.migrate import upgrade
        from lrlab.runs import store
        from lrlab.schemas import RunSpec

        upgrade()

        def spawn() -> None:
            logs.append(tmp / f"worker-{len(logs)}.log")
            workers.append(Worker(env, logs[-1]))

        for _ in range(args.workers):
            spawn()
        t0 = time.monotonic()
        with session_scope() as s:
            runs = [
                store.create_run(
                    s,
                    RunSpec.model_validate(
                        {"dataset": args.dataset, "epochs": args.epochs, "batch_size": args.batch_size, "seed": i}
                    ),
                    QUEUE,
                )
                for i in range(args.runs)
            ]
            ids = [r.id for r in runs]
            messages = outbox.runs(s, runs)
        outbox.send(messages)
        print(f"{args.runs} runs submitted to {args.workers} workers; logs in {tmp}", flush=True)

        kills: list[int] = []  # runs each kill interrupted
        pauses: list[int] = []
        paused: set[Worker] = set()

        def wake(w: Worker) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGCONT)
            paused.discard(w)

        actions = ["kill"] * args.kills + ["pause"] * args.pauses
        rng.shuffle(actions)
        deadline = t0 + args.timeout
        for action in actions:
            time.sleep(rng.uniform(*args.kill_every))
            if all_finished(ids) or time.monotonic() > deadline:
                break
            awake = [w for w in workers if w not in paused]
            busy = [w for w in awake if running_on(w.prefix)]
            victim = rng.choice(busy or awake)
            hit = running_on(victim.prefix)
            elapsed = time.monotonic() - t0
            if action == "kill":
                victim.kill()
                workers.remove(victim)
                kills.append(len(hit))
                print(f"{elapsed:6.1f}s kill -9 {victim.proc.pid} (running {len(hit)}); replacing", flush=True)
                spawn()
            else:
                os.killpg(victim.proc.pid, signal.SIGSTOP)
                paused.add(victim)
                threading.Timer(args.lease_seconds + 3, wake, args=(victim,)).start()
                pauses.append(len(hit))
                print(f"{elapsed:6.1f}s SIGSTOP {victim.proc.pid} (running {len(hit)})", flush=True)
        while not all_finished(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        seconds = time.monotonic() - t0
        print(report(args, ids, logs, kills, pauses, seconds))
    finally:
        for w in workers:
            wake(w)
            w.stop()
        from lrlab.db import get_engine

        get_engine().dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        release_redis_db(redis_db, token)


if __name__ == "__main__":
    main()
