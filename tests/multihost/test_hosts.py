"""lrlab across hosts (issue 17 #2): the api on one host, two workers on two others, each with its own empty data
dir, everything (Postgres, Redis, the S3 store) over the veth network; uploaded datasets and population
checkpoints in the S3 store (a moto server), no disk shared between hosts.

One scenario: a distributed population, a fused grid and a run on an uploaded dataset train across the two
worker hosts; the host training the uploaded-dataset run is cut off mid-run (link down). Its work resumes on
the other host, which fetches the dataset from the store into its own empty cache; every run succeeds with each
epoch stored exactly once. When the link comes back, the stale worker writes nothing: no curve point, no run
row, no object in the store.

Postgres records which host wrote each curve point (a trigger reads `application_name`, which each host sets
to its hostname: tests/multihost/stack.py).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest

from tests import cluster
from tests.conftest import PG_ADMIN_URL, REDIS_HOST
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
FINISHED = ("succeeded", "failed", "cancelled", "diverged")


@dataclass
class Deployment:
    lab: cluster.Cluster
    pg: str
    base: str
    key: str
    logs: Path
    moto: MotoServer
    bucket: str
    procs: dict[str, Any] = field(default_factory=dict)

    def data_dir(self, host: cluster.Host) -> Path:
        return self.logs / host.hostname / "data"

    def objects(self) -> dict[str, bytes]:
        return self.moto.objects(self.bucket)

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
        "postgres": ("127.0.0.1", int(PG_ADMIN_URL.rsplit(":", 1)[1].split("/")[0])),
        "redis": ("127.0.0.1", int(REDIS_HOST.rsplit(":", 1)[1])),
        "s3": ("127.0.0.1", moto_server.port),
    }
    bucket = moto_server.create_bucket()
    storage = {**moto_server.env(), "LRLAB_STORAGE_URL": f"s3://{bucket}/lab"}
    with stack.private_services() as services, cluster.Cluster(hosts=3, forward=forward) as lab:
        base_env = {**_clean_env(), **services, **storage, **SETTINGS}
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
        d = Deployment(lab, services["pg"], "", key, root, moto_server, bucket)
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


def _npz(n: int = 3000, seed: int = 0) -> bytes:
    """Three separable blobs in 16-D, n samples: an upload big enough for a few hundred milliseconds an epoch."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 16)).astype(np.float32) + 3 * np.eye(3, 16, dtype=np.float32)[y]
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _host_of(d: Deployment, run_id: str) -> str:
    (worker,) = d.query("SELECT worker FROM run WHERE id = %s", run_id)[0]
    return str(worker).split("@", 1)[-1]


def _cache_entries(d: Deployment, host: cluster.Host) -> set[str]:
    cache = d.data_dir(host) / "datasets" / ".uploads"
    return {p.name for p in cache.iterdir() if not p.name.startswith(".")} if cache.is_dir() else set()


def test_work_resumes_on_the_other_host_when_one_is_cut_off(deployment: Deployment) -> None:
    d = deployment
    digits = {"dataset": "digits", "model": {"name": "mlp", "hidden": [64]}, "device": "cpu"}
    with d.client() as http:
        uploaded = http.post("/v1/datasets", files={"file": ("blobs.npz", _npz())}).raise_for_status().json()
        assert set(d.objects()) == {f"lab/blobs/{uploaded['sha256'][:2]}/{uploaded['sha256']}"}
        assert not (d.data_dir(d.api) / "blobs").exists()  # the api kept no copy
        assert not any((d.data_dir(d.api) / "staging").iterdir())

        population = {
            "name": "across hosts",
            "base": {**digits, "optimizer": {"name": "sgd", "lr": 0.05}},
            "population": 4,
            "epochs": 60,
            "interval": 20,
            "execution": "distributed",
            "mutations": {"lr": {"log_uniform": [1e-3, 0.3]}},
        }
        pbt = http.post("/v1/pbt", json=population).raise_for_status().json()
        upload_spec = {"dataset": {"id": uploaded["id"]}, "model": {"name": "mlp", "hidden": [64]}, "epochs": 150}
        on_upload = http.post("/v1/runs", json={**upload_spec, "device": "cpu"}).raise_for_status().json()["id"]
        fused = (
            http.post(
                "/v1/experiments",
                json={
                    "name": "fused",
                    "base": {**digits, "epochs": 200},
                    "grid": {"lr": [0.01, 0.1]},
                    "execution": "fused",
                },
            )
            .raise_for_status()
            .json()
        )
        members = [m["run_id"] for m in http.get(f"/v1/pbt/{pbt['id']}").raise_for_status().json()["members"]]
        ids = [*members, on_upload, *fused["runs"]]

        # The host training the uploaded-dataset run is cut off once it is well into it.
        _wait(lambda: d.least_epoch([on_upload]) >= 10, 180, "the uploaded-dataset run to train 10 epochs")
        holder = _host_of(d, on_upload)
        cut = next(h for h in d.workers if h.hostname == holder)
        other = next(h for h in d.workers if h is not cut)
        assert cut.hostname != other.hostname and not _cache_entries(d, other)  # nothing of the upload there yet
        cut.cut()
        cut_at: datetime = d.query("SELECT clock_timestamp()")[0][0]
        held = [r for (r,) in d.query("SELECT id FROM run WHERE worker LIKE %s AND status = 'running'", f"%@{holder}")]
        assert on_upload in held

        def finished() -> list[dict[str, Any]] | None:
            runs = _runs(http, ids)
            return runs if all(r["status"] in FINISHED for r in runs) else None

        done = _wait(finished, 420, "every run to finish")
        assert [r["status"] for r in done] == ["succeeded"] * len(ids), [(r["id"], r.get("error")) for r in done]
        assert http.get(f"/v1/pbt/{pbt['id']}").json()["status"] == "succeeded"
        for run in done:  # each epoch stored exactly once: none lost, none twice
            assert d.epochs(run["id"]) == list(range(1, run["spec"]["epochs"] + 1)), run["id"]
        for run_id in held:  # trained on from the other host after the cut
            after = d.query("SELECT DISTINCT host FROM curve_write WHERE run_id = %s AND at > %s", run_id, cut_at)
            assert after == [(other.hostname,)], (run_id, after)
        # the other host fetched the dataset from the store into its own, empty, cache
        assert any(name.startswith(uploaded["sha256"]) for name in _cache_entries(d, other))
        # the population trained on both hosts, its checkpoints between rounds in the store
        member_hosts = d.query("SELECT DISTINCT host FROM curve_write WHERE run_id = ANY(%s)", members)
        assert {h for (h,) in member_hosts} == {cut.hostname, other.hostname}
        checkpoints = {k for k in d.objects() if k.startswith(f"lab/checkpoints/pbt/{pbt['id']}/")}
        assert checkpoints == {f"lab/checkpoints/pbt/{pbt['id']}/{k}/60" for k in range(4)}  # the last ones kept

        # The link comes back: the stale worker finds its leases gone and writes nothing.
        points = d.query("SELECT run_id, epoch, seconds, val_loss FROM curve_point ORDER BY 1, 2")
        rows = d.query("SELECT id, status, lease_token, finished_at, attempts, worker FROM run ORDER BY id")
        objects = d.objects()
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
        assert d.query("SELECT run_id, epoch, seconds, val_loss FROM curve_point ORDER BY 1, 2") == points
        assert d.query("SELECT id, status, lease_token, finished_at, attempts, worker FROM run ORDER BY id") == rows
        assert d.objects() == objects
        log = (d.logs / f"{holder}.log").read_text()
        assert "lease lost" in log, log[-3000:]
