"""lrlab across hosts: how long a lost host's run takes to resume, and throughput with one vs two worker hosts.

Builds hosts as Linux network namespaces (tests/cluster.py; root needed): the api on one, workers on two others,
each with its own empty data dir, Postgres, Redis and the S3 store (a moto server, LRLAB_STORAGE_URL=s3://...)
reached over the veth network through forwarders: the deployment tests/multihost/test_hosts.py runs
(tests/multihost/stack.py).
Measured side by side in one invocation:

  throughput  R runs of E epochs (separate, digits, an MLP) submitted at once, until the last one ends: with one
              worker host, then with two (the second host's worker started in between)
  resume      one run trains; its host is cut off (link down: packets dropped); the time from the cut to the
              first epoch stored from the other host, and what it is made of: until the reconciler requeued the
              run (the lease runs out), until the other worker claimed it, until its first epoch was stored.
              With the default lease (LRLAB_LEASE_SECONDS=30, LRLAB_RECONCILE_SECONDS=5) and a short one.

  python bench/cluster.py                               # 8 runs x 500 epochs; resume 3 times per lease setting
  python bench/cluster.py --runs 8 --epochs 500 --resume-repeats 3 --skip-default-lease

Needs root, Postgres and Redis on localhost (LRLAB_TEST_PG, LRLAB_TEST_REDIS as in tests/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from tests import cluster  # noqa: E402
from tests.conftest import PG_ADMIN_URL, REDIS_HOST  # noqa: E402
from tests.multihost import stack  # noqa: E402
from tests.storage_fixtures import MotoServer  # noqa: E402

BASE = {"dataset": "digits", "model": {"name": "mlp", "hidden": [64]}, "device": "cpu", "optimizer": {"name": "sgd"}}
FINISHED = ("succeeded", "failed", "cancelled")


class Lab:
    """A deployment on hosts: api on h0, worker hosts h1, h2 (started on demand), one private database."""

    def __init__(self, lab: cluster.Cluster, services: dict[str, str], settings: dict[str, str], logs: Path) -> None:
        self.lab, self.pg, self.logs = lab, services["pg"], logs
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("LRLAB_", "AWS_"))}
        base = {**clean, **services, **settings}
        self.env = {h.hostname: stack.on_host(base, lab, h, logs / h.hostname / "data") for h in lab.hosts}
        self.procs: dict[str, Any] = {}
        self.http: httpx.Client | None = None

    @property
    def api(self) -> cluster.Host:
        return self.lab.hosts[0]

    def start(self) -> None:
        stack.migrate(self.api, self.env[self.api.hostname])
        made = self.api.run(
            [*stack.CLI, "keys", "create", "--name", "bench"],
            env=self.env[self.api.hostname],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        self.procs["api"], base = stack.start_api(self.api, self.env[self.api.hostname], self.logs / "api.log")
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def start_worker(self, host: cluster.Host) -> None:
        log = self.logs / f"{host.hostname}.log"
        self.procs[host.hostname] = stack.start_worker(host, self.env[host.hostname], log, self.pg)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        for proc in self.procs.values():
            stack.stop(proc)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg) as conn:
            return conn.execute(sql, params).fetchall()

    def submit(self, runs: int, epochs: int) -> list[str]:
        assert self.http is not None
        grid = {"lr": [round(0.01 + 0.01 * i, 4) for i in range(runs)]}
        body = {"name": "bench", "base": {**BASE, "epochs": epochs}, "grid": grid, "execution": "separate"}
        return list(self.http.post("/v1/experiments", json=body).raise_for_status().json()["runs"])

    def wait_finished(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = [s for (s,) in self.query("SELECT status FROM run WHERE id = ANY(%s)", ids)]
            if len(statuses) == len(ids) and all(s in FINISHED for s in statuses):
                if set(statuses) != {"succeeded"}:
                    raise RuntimeError(f"runs ended {statuses}")
                return
            time.sleep(0.2)
        raise TimeoutError(f"runs not finished after {timeout}s")

    def now(self) -> datetime:
        return self.query("SELECT clock_timestamp()")[0][0]


@contextlib.contextmanager
def deployment(settings: dict[str, str], moto: MotoServer, logs: Path) -> Iterator[Lab]:
    forward = {
        "postgres": ("127.0.0.1", int(PG_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])),
        "redis": ("127.0.0.1", int(REDIS_HOST.rsplit(":", 1)[1])),
        "s3": ("127.0.0.1", moto.port),
    }
    storage = {**moto.env(), "LRLAB_STORAGE_URL": f"s3://{moto.create_bucket()}/bench"}
    with stack.private_services() as services, cluster.Cluster(hosts=3, forward=forward) as lab:
        bench = Lab(lab, {**services, **storage}, settings, logs)
        try:
            bench.start()
            yield bench
        finally:
            bench.stop()


def throughput(bench: Lab, runs: int, epochs: int) -> list[tuple[int, float]]:
    """(worker hosts, seconds for `runs` runs) with one worker host, then two."""
    found = []
    for n, host in ((1, bench.lab.hosts[1]), (2, bench.lab.hosts[2])):
        bench.start_worker(host)
        ids = bench.submit(runs, epochs)
        t0 = time.perf_counter()
        bench.wait_finished(ids, 3600)
        found.append((n, time.perf_counter() - t0))
    return found


def resume_once(bench: Lab, epochs: int) -> dict[str, float]:
    """Cut the host training one run: seconds from the cut to its requeue, its claim elsewhere, its next epoch."""
    (run_id,) = bench.submit(1, epochs)
    deadline = time.monotonic() + 120
    while not bench.query("SELECT 1 FROM curve_point WHERE run_id = %s AND epoch >= 5", run_id):
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not start")
        time.sleep(0.1)
    holder = bench.query("SELECT worker FROM run WHERE id = %s", run_id)[0][0].split("@", 1)[-1]
    host = next(h for h in bench.lab.hosts if h.hostname == holder)
    host.cut()
    cut_at = bench.now()
    requeued = claimed = stored = None
    deadline = time.monotonic() + 600
    while stored is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not resume")
        status, worker, attempts = bench.query("SELECT status, worker, attempts FROM run WHERE id = %s", run_id)[0]
        now = bench.now()
        if requeued is None and (status == "queued" or attempts > 1):
            requeued = now
        if claimed is None and status == "running" and not worker.endswith(f"@{holder}"):
            claimed = now
        first = "SELECT min(at) FROM curve_write WHERE run_id = %s AND host <> %s AND at > %s"
        stored = bench.query(first, run_id, holder, cut_at)[0][0]
        time.sleep(0.05)
    host.restore()
    restored_at = bench.now()
    assert bench.http is not None
    bench.http.post(f"/v1/runs/{run_id}/cancel").raise_for_status()
    beat = "SELECT 1 FROM worker_heartbeat WHERE hostname LIKE %s AND last_seen_at > %s"
    running = "SELECT 1 FROM run WHERE status = 'running'"
    while not bench.query(beat, f"%@{holder}", restored_at) or bench.query(running):  # both idle again
        if time.monotonic() > deadline:
            raise TimeoutError("the workers did not settle after the cut")
        time.sleep(0.2)
    assert requeued is not None and claimed is not None
    return {
        "requeued": (requeued - cut_at).total_seconds(),
        "claimed": (claimed - cut_at).total_seconds(),
        "stored": (stored - cut_at).total_seconds(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8, help="runs per throughput measurement (default 8)")
    ap.add_argument("--epochs", type=int, default=500, help="epochs per throughput run (default 500)")
    ap.add_argument("--resume-repeats", type=int, default=3)
    ap.add_argument("--skip-default-lease", action="store_true", help="resume with the short lease only")
    args = ap.parse_args()
    if (why := cluster.unavailable()) is not None:
        raise SystemExit(f"cannot make hosts here: {why}")

    common = {"LRLAB_TORCH_THREADS": "1", "LRLAB_LOG_LEVEL": "INFO"}
    leases = {"short (6 s, reconcile 1 s)": {"LRLAB_LEASE_SECONDS": "6", "LRLAB_RECONCILE_SECONDS": "1"}}
    if not args.skip_default_lease:
        leases["default (30 s, reconcile 5 s)"] = {}
    logs = Path(tempfile.mkdtemp(prefix="lrlab-cluster-bench-"))
    moto = MotoServer(log=logs / "moto.log").start()
    rates: list[tuple[int, float]] = []
    resumes: dict[str, list[dict[str, float]]] = {}
    try:
        for i, (label, lease) in enumerate(leases.items()):
            with deployment({**common, **lease}, moto, logs / f"d{i}") as bench:
                stack.record_writes(bench.pg)
                if i == 0:
                    rates = throughput(bench, args.runs, args.epochs)
                else:
                    bench.start_worker(bench.lab.hosts[1])
                    bench.start_worker(bench.lab.hosts[2])
                resumes[label] = [resume_once(bench, 2000) for _ in range(args.resume_repeats)]
    finally:
        moto.stop()

    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, {date.today()}")
    print(f"logs: {logs}")
    print()
    print(f"| worker hosts | {args.runs} runs x {args.epochs} epochs | runs per minute | vs one host |")
    print("|---|---|---|---|")
    for n, seconds in rates:
        print(f"| {n} | {seconds:.1f} s | {args.runs / seconds * 60:.1f} | {rates[0][1] / seconds:.2f}x |")
    print()
    print("| lease | requeued after the cut | claimed on the other host | first epoch stored there |")
    print("|---|---|---|---|")
    for label, found in resumes.items():
        cells = []
        for part in ("requeued", "claimed", "stored"):
            values = [f[part] for f in found]
            cells.append(f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
