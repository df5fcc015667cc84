"""lrlab across hosts (issue 17 #2): the api on one host, two workers on two others, each with its own empty data
dir, everything over the veth network; one worker's host is cut off mid-run and its work resumes on the other.

Postgres records which host wrote each curve point (a trigger reads `application_name`, which each host sets
to its hostname), so the test can say that every epoch is stored exactly once, that the cut host's runs went on
from the other host, and that once its link is back the stale worker writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests import cluster
from tests.multihost import stack
from tests.storage_fixtures import MotoServer

pytestmark = pytest.mark.usefixtures("services", "netns")

# Short leases so a lost host is noticed in seconds; one torch thread per run (two workers share two cores).
SETTINGS = {
    "LRLAB_LEASE_SECONDS": "6",
    "LRLAB_RECONCILE_SECONDS": "1",
    "LRLAB_HEARTBEAT_SECONDS": "1",
    "LRLAB_HEARTBEAT_TTL_SECONDS": "5",
    "LRLAB_CHECKPOINT_SECONDS": "1",
    "LRLAB_TORCH_THREADS": "1",
    "LRLAB_LOG_LEVEL": "INFO",
}


@dataclass
class Deployment:
    lab: cluster.Cluster
    pg: str
    base: str
    key: str
    logs: Path
    procs: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> cluster.Host:
        return self.lab.hosts[0]

    @property
    def workers(self) -> list[cluster.Host]:
        return self.lab.hosts[1:]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg) as conn:
            return conn.execute(sql, params).fetchall()

    def epochs(self, run_id: str) -> list[int]:
        return [e for (e,) in self.query("SELECT epoch FROM curve_point WHERE run_id = %s ORDER BY epoch", run_id)]

    def least_epoch(self, run_ids: list[str]) -> int:
        """The last epoch stored of the run furthest behind (0 while one has none)."""
        latest = self.query("SELECT max(epoch) FROM curve_point WHERE run_id = ANY(%s) GROUP BY run_id", run_ids)
        return min(e for (e,) in latest) if len(latest) == len(set(run_ids)) else 0

    def writes_by_host(self) -> dict[str, int]:
        return dict(self.query("SELECT host, count(*) FROM curve_write GROUP BY host"))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def deployment(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("hosts")
    forward = {
        "postgres": ("127.0.0.1", int(stack.PG_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])),
        "redis": ("127.0.0.1", int(stack.REDIS_HOST.rsplit(":", 1)[1])),
        "s3": ("127.0.0.1", moto_server.port),
    }
    with stack.private_services() as services, cluster.Cluster(hosts=3, forward=forward) as lab:
        base_env = {**_clean_env(), **services, **SETTINGS}
        api_host = lab.hosts[0]
        env = {h.hostname: stack.on_host(base_env, lab, h, root / h.hostname / "data") for h in lab.hosts}
        stack.migrate(api_host, env[api_host.hostname])
        stack.record_writes(services["pg"])
        made = api_host.run(
            [*stack.CLI, "keys", "create", "--name", "multihost"],
            env=env[api_host.hostname],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        key = made.stdout.strip().splitlines()[-1]
        d = Deployment(lab, services["pg"], "", key, root)
        try:
            d.procs["api"], d.base = stack.start_api(api_host, env[api_host.hostname], root / "api.log")
            for host in d.workers:
                d.procs[host.hostname] = stack.start_worker(
                    host, env[host.hostname], root / f"{host.hostname}.log", services["pg"]
                )
            yield d
        finally:
            for proc in d.procs.values():
                stack.stop(proc)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("LRLAB_", "AWS_"))}


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _runs(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [client.get(f"/v1/runs/{i}").raise_for_status().json() for i in ids]


def test_work_resumes_on_the_other_host_when_one_is_cut_off(deployment: Deployment) -> None:
    d, epochs = deployment, 300
    with d.client() as http:
        base = {"dataset": "digits", "model": {"name": "mlp", "hidden": [64]}, "epochs": epochs, "device": "cpu"}
        fused = (
            http.post(
                "/v1/experiments",
                json={"name": "fused grid", "base": base, "grid": {"lr": [0.01, 0.03, 0.1]}, "execution": "fused"},
            )
            .raise_for_status()
            .json()
        )
        separate = (
            http.post(
                "/v1/experiments",
                json={"name": "grid", "base": base, "grid": {"lr": [0.01, 0.1]}, "execution": "separate"},
            )
            .raise_for_status()
            .json()
        )
        ids = fused["runs"] + separate["runs"]

        # Both worker hosts are training, then the one holding the fused grid is cut off.
        hosts = {h.hostname for h in d.workers}
        _wait(lambda: hosts <= set(d.writes_by_host()), 120, "both worker hosts to write curve points")
        # ... and the fused grid has epochs left to train after the cut (its host is the one cut)
        _wait(lambda: d.least_epoch(fused["runs"]) >= 10, 120, "the fused grid to train 10 epochs")
        holder = d.query("SELECT worker FROM run WHERE id = %s", fused["runs"][0])[0][0].split("@", 1)[-1]
        cut = next(h for h in d.workers if h.hostname == holder)
        other = next(h for h in d.workers if h is not cut)
        cut.cut()
        cut_at: datetime = d.query("SELECT clock_timestamp()")[0][0]
        on_cut_host = [
            r for (r,) in d.query("SELECT id FROM run WHERE worker LIKE %s AND status = 'running'", f"%@{holder}")
        ]
        assert set(fused["runs"]) <= set(on_cut_host)

        def finished() -> list[dict[str, Any]] | None:
            runs = _runs(http, ids)
            return runs if all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs) else None

        done = _wait(finished, 300, "every run to finish")
        assert [r["status"] for r in done] == ["succeeded"] * len(ids), [(r["id"], r.get("error")) for r in done]
        for run_id in ids:
            assert d.epochs(run_id) == list(range(1, epochs + 1))  # each once: none lost, none twice
        for run_id in on_cut_host:  # trained on from the other host after the cut
            after = d.query("SELECT DISTINCT host FROM curve_write WHERE run_id = %s AND at > %s", run_id, cut_at)
            assert after == [(other.hostname,)], (run_id, after)
        resumed = d.query(
            "SELECT min(at) - %s FROM curve_write WHERE run_id = ANY(%s) AND at > %s", cut_at, on_cut_host, cut_at
        )
        print("first epoch stored from the other host", resumed[0][0], "after the cut")

        # The link comes back: the stale worker finds its leases gone and writes nothing.
        before = d.query("SELECT run_id, epoch, seconds, val_loss FROM curve_point ORDER BY 1, 2")
        rows_before = _runs(http, ids)
        cut.restore()
        restored_at = d.query("SELECT clock_timestamp()")[0][0]
        _wait(
            lambda: d.query(
                "SELECT 1 FROM worker_heartbeat WHERE hostname LIKE %s AND last_seen_at > %s",
                f"%@{holder}",
                restored_at,
            ),
            60,
            "the stale worker to reach the database again",
        )
        time.sleep(5)  # its progress writers' next transactions (every 0.5 s) and the end of its epoch
        assert d.query("SELECT count(*) FROM curve_write WHERE host = %s AND at > %s", holder, restored_at) == [(0,)]
        assert d.query("SELECT run_id, epoch, seconds, val_loss FROM curve_point ORDER BY 1, 2") == before
        assert _runs(http, ids) == rows_before
        log = (d.logs / f"{holder}.log").read_text()
        assert "lease lost" in log, log[-3000:]
