"""Nothing lost, nothing twice: a worker killed mid-run, a send that never happened, a broker restart.

Each test runs its own worker processes on a private queue (the session's shared worker serves `cpu`),
with leases of seconds instead of the default half minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from lrlab.broker import make_celery
from lrlab.db import session_scope
from lrlab.models import Checkpoint, CurvePoint, Run
from lrlab.runs import store
from lrlab.schemas import RunSpec
from lrlab.settings import Settings
from tests.conftest import start_worker, stop_process, wait_for
from tests.rows import send

pytestmark = pytest.mark.service

FAST = {
    "LRLAB_LEASE_SECONDS": "2",
    "LRLAB_RECONCILE_SECONDS": "0.5",
    "LRLAB_CHECKPOINT_SECONDS": "0",
    "LRLAB_PROGRESS_FLUSH_SECONDS": "0",
}
CRASH_SPEC = RunSpec.model_validate({"dataset": "digits", "epochs": 40, "batch_size": 32, "seed": 3})


def create_run(spec: RunSpec, queue: str) -> str:
    with session_scope() as s:
        return store.create_run(s, spec, queue).id


def run_row(run_id: str) -> Run:
    with session_scope() as s:
        found = s.get(Run, run_id)
        assert found is not None
        return found


def curve(run_id: str) -> list[dict[str, Any]]:
    with session_scope() as s:
        return [
            {k: v for k, v in p.items() if k != "seconds"}  # wall time differs between any two runs
            for p in store.points(s, run_id)
        ]


def finished(run_id: str) -> Run | None:
    got = run_row(run_id)
    return got if got.status not in ("queued", "running") else None


def wait_finished(run_id: str, log: Path, timeout: float = 60) -> Run:
    """Wait for the run's outcome; on a timeout, say where the run stands and what its worker logged."""
    try:
        return wait_for(lambda: finished(run_id), timeout, f"run {run_id} to finish")  # type: ignore[no-any-return]
    except AssertionError as exc:
        got = run_row(run_id)
        state = f"status={got.status} attempts={got.attempts} dispatched_at={got.dispatched_at} worker={got.worker}"
        raise AssertionError(f"{exc}\n{state}\n--- {log.name}:\n{log.read_text(errors='replace')[-3000:]}") from None


def uninterrupted_curve(spec: RunSpec) -> list[dict[str, Any]]:
    """The same spec trained start to end in this process, one thread as on the workers."""
    import torch

    import trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = trainer.train(trainer.RunConfig.from_spec(spec.to_json()), device="cpu")
    finally:
        torch.set_num_threads(threads)
    return [
        {k: v for k, v in store.point_row("", vars(p)).items() if k not in ("run_id", "seconds")} for p in result.points
    ]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in reversed(procs):  # a worker before the redis it uses
        stop_process(proc, timeout=10)


def test_kill_9_mid_run_resumes_from_checkpoint_once(
    service_env: dict[str, str], workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = {**service_env, **FAST}
    first = start_worker(env, "--queues", "crash", log=tmp_path / "first.log")
    workers.append(first)
    run_id = create_run(CRASH_SPEC, "crash")
    assert send("runs", [run_id], "crash")

    def checkpointed() -> bool:
        with session_scope() as s:
            ckpt = s.get(Checkpoint, run_id)
            return ckpt is not None and ckpt.epoch >= 5

    try:
        wait_for(checkpointed, 60, "a checkpoint at epoch 5 or later")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{(tmp_path / 'first.log').read_text(errors='replace')[-3000:]}") from None
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = run_row(run_id)
    assert at_kill.status == "running" and at_kill.attempts == 1
    assert len(curve(run_id)) < CRASH_SPEC.epochs, "the run finished before the kill; make it longer"

    second_log = tmp_path / "second.log"
    workers.append(start_worker(env, "--queues", "crash", log=second_log))
    done = wait_finished(run_id, second_log)
    assert done.status == "succeeded", (done.error, second_log.read_text()[-3000:])
    assert done.attempts == 2 and done.lease_token is None
    assert "resumes after epoch" in second_log.read_text()  # from the checkpoint, not epoch 1
    got = curve(run_id)
    assert [p["epoch"] for p in got] == list(range(1, CRASH_SPEC.epochs + 1))
    assert got == uninterrupted_curve(CRASH_SPEC)
    assert done.summary is not None and done.summary["epochs_completed"] == CRASH_SPEC.epochs
    with session_scope() as s:
        assert s.get(Checkpoint, run_id) is None


def test_run_never_sent_is_delivered_by_the_reconciler(
    service_env: dict[str, str], workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # As if the API committed and then its send failed: no message anywhere, dispatched_at NULL.
    run_id = create_run(RunSpec(dataset="blobs", epochs=2), "outbox")
    assert run_row(run_id).dispatched_at is None
    workers.append(start_worker({**service_env, **FAST}, "--queues", "outbox", log=tmp_path / "w.log"))
    done = wait_finished(run_id, tmp_path / "w.log")
    assert done.status == "succeeded" and done.attempts == 1 and done.dispatched_at is not None
    assert [p["epoch"] for p in curve(run_id)] == [1, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_restart_keeps_queued_runs(
    service_env: dict[str, str], workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    argv = [server, "--port", str(port), "--appendonly", "yes", "--dir", str(tmp_path), "--save", ""]
    log = (tmp_path / "redis.log").open("ab")
    broker = redis.Redis.from_url(url)

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        workers.append(proc)
        wait_for(lambda: _ping(broker), 10, "redis to start")
        return proc

    first = start_redis()
    ids = [create_run(RunSpec(dataset="blobs", epochs=2, seed=s), "aof") for s in range(2)]
    app = make_celery(Settings(broker_url=url))
    assert send("runs", ids, "aof", app=app) == ids
    assert broker.llen("aof") == 2
    subprocess.run(["redis-cli", "-p", str(port), "shutdown"], check=False, capture_output=True, timeout=10)
    first.wait(timeout=10)
    start_redis()
    assert broker.llen("aof") == 2  # replayed from the append-only file

    # A day between redispatches: whatever runs now came through the broker, not the reconciler.
    env = {**service_env, **FAST, "LRLAB_BROKER_URL": url, "LRLAB_REDISPATCH_SECONDS": "86400"}
    workers.append(start_worker(env, "--queues", "aof", log=tmp_path / "w.log"))
    for run_id in ids:
        done = wait_finished(run_id, tmp_path / "w.log")
        assert done.status == "succeeded" and done.attempts == 1
        with session_scope() as s:
            rows = s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == run_id)).all()
        assert sorted(rows) == [1, 2]


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_post_run_stamps_dispatched_at(api_client: Any) -> None:
    # device cuda: the gpu queue, which no test worker consumes, so the row stays queued
    resp = api_client.post("/v1/runs", json={"device": "cuda", "epochs": 1})
    assert resp.status_code == 202, resp.text
    run = run_row(resp.json()["id"])
    assert run.status == "queued" and run.dispatched_at is not None and run.dispatched_at >= run.created_at
    api_client.post(f"/v1/runs/{run.id}/cancel")


def test_kill_9_mid_pack_resumes_each_member_from_its_checkpoint(
    service_env: dict[str, str], workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = {**service_env, **FAST}
    first = start_worker(env, "--queues", "crashpack", log=tmp_path / "first.log")
    workers.append(first)
    specs = [CRASH_SPEC.model_copy(update={"seed": seed}) for seed in (3, 4)]
    ids = [create_run(spec, "crashpack") for spec in specs]
    assert send("pack", ids, "crashpack") == ids

    def checkpointed() -> bool:
        with session_scope() as s:
            ckpts = [s.get(Checkpoint, run_id) for run_id in ids]
            return all(c is not None and c.epoch >= 5 for c in ckpts)

    try:
        wait_for(checkpointed, 60, "checkpoints of both members at epoch 5 or later")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{(tmp_path / 'first.log').read_text(errors='replace')[-3000:]}") from None
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert all(run_row(r).pack_id is not None and len(curve(r)) < CRASH_SPEC.epochs for r in ids)

    second_log = tmp_path / "second.log"
    workers.append(start_worker(env, "--queues", "crashpack", log=second_log))
    for run_id, spec in zip(ids, specs, strict=True):
        done = wait_finished(run_id, second_log)
        assert done.status == "succeeded" and done.attempts == 2, (done.error, second_log.read_text()[-3000:])
        got, expected = curve(run_id), uninterrupted_curve(spec)
        assert [p["epoch"] for p in got] == list(range(1, spec.epochs + 1))
        for ours, theirs in zip(got, expected, strict=True):  # fused then alone: float32 rounding differs
            assert ours["val_accuracy"] == pytest.approx(theirs["val_accuracy"], abs=0.01)
    assert second_log.read_text().count("resumes after epoch") == 2  # from checkpoints, not epoch 1
