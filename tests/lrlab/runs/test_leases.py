"""Leases, the progress writer's lease check, dispatch and the reconciler, over the real Postgres and Redis.

Other workers of the test session reconcile the same database meanwhile, so assertions are about the
state rows and queues end up in, never about which reconciler got there first.
"""

from __future__ import annotations

import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select, text, update

from lrlab import leases, store
from lrlab.db import get_engine, session_scope
from lrlab.models import Checkpoint, CurvePoint, LrFinder, Run, utcnow
from lrlab.queue import make_celery
from lrlab.schemas import RunSpec
from lrlab.settings import Settings
from tests.conftest import wait_for
from worker.progress import ProgressWriter

pytestmark = pytest.mark.service


@pytest.fixture
def q(service_env: dict[str, str], redis_url: str) -> Any:
    """A queue name no worker consumes, and a way to count the messages waiting in it."""
    name = f"t{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(redis_url)
    yield name, lambda: int(broker.llen(name))
    broker.delete(name)


def new_run(queue: str, **values: Any) -> str:
    with session_scope() as s:
        run = store.create_run(s, RunSpec(epochs=3), queue)
        for k, v in values.items():
            setattr(run, k, v)
        return run.id


def row(run_id: str) -> Run:
    with session_scope() as s:
        found = s.get(Run, run_id)
        assert found is not None
        return found


def set_run(run_id: str, **values: Any) -> None:
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(**values))


def epochs(run_id: str) -> list[int]:
    with session_scope() as s:
        return list(s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == run_id).order_by(CurvePoint.epoch)))


def point(epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}


def pt(epoch: int) -> dict[str, Any]:
    return {**point(epoch), "lr": 0.1, "seconds": 0.01}


def test_claim_run_once_among_racing_workers(q: Any) -> None:
    run_id = new_run(q[0])
    barrier = threading.Barrier(6)

    def claim(i: int) -> leases.Claim | None:
        barrier.wait()
        return leases.claim_run(run_id, f"w{i}", lease_seconds=30)

    with ThreadPoolExecutor(6) as pool:
        claims = [c for c in pool.map(claim, range(6)) if c is not None]
    assert len(claims) == 1
    got = row(run_id)
    assert got.status == "running" and got.attempts == 1 and got.lease_token == claims[0].token
    assert got.lease_expires_at is not None
    assert timedelta(seconds=25) < got.lease_expires_at - utcnow() <= timedelta(seconds=30)
    assert claims[0].checkpoint is None and claims[0].checkpoint_epoch == 0


def test_writer_renews_lease_then_writes_nothing_once_it_is_stolen(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=5)
    assert claim is not None
    writer = ProgressWriter(run_id, lease_token=claim.token, lease_seconds=5, flush_seconds=0, poll_seconds=0.05)
    writer.put_point(pt(1))
    wait_for(lambda: epochs(run_id) == [1], 5, "epoch 1 written")
    first = row(run_id).lease_expires_at
    wait_for(lambda: row(run_id).lease_expires_at > first, 5, "the lease renewed while idle")  # type: ignore[operator]

    set_run(run_id, lease_token="someone-else")  # expired and reclaimed by another worker
    ran: list[int] = []
    writer.put_point(pt(2))
    writer.put_action(lambda conn: ran.append(1))
    wait_for(writer.lost.is_set, 5, "the writer to notice")
    writer.put_point(pt(3))
    writer.close()  # a lost lease is not an error

    assert writer.should_stop() and "lease lost" in writer.lost_reason
    assert epochs(run_id) == [1] and ran == []
    assert leases.finish_run(run_id, claim.token, status="succeeded") is False
    assert (row(run_id).status, row(run_id).lease_token) == ("running", "someone-else")


def test_writer_gives_run_up_rather_than_failing_when_database_stays_away(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=5)
    assert claim is not None
    writer = ProgressWriter(run_id, lease_token=claim.token, flush_seconds=0, poll_seconds=0.05, retry_seconds=0)
    writer.put_point(pt(1))
    wait_for(lambda: epochs(run_id) == [1], 5, "epoch 1 written")
    pid = writer._conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
    with session_scope() as s:  # the writer's connection dies as in a database restart
        s.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    wait_for(writer.lost.is_set, 5, "the writer to give up")
    writer.close()
    assert "database unreachable" in writer.lost_reason
    assert row(run_id).status == "running"  # left to the lease: requeued and resumed, never failed


def test_reconcile_requeues_expired_lease_and_sends_it(q: Any) -> None:
    name, waiting = q
    run_id = new_run(name)
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None
    with session_scope() as s:
        leases.save_checkpoint(s, run_id, 2, b"checkpoint bytes")
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    leases.reconcile()
    got = row(run_id)
    assert (got.status, got.lease_token, got.lease_expires_at) == ("queued", None, None)
    assert got.dispatched_at is not None and waiting() == 1
    again = leases.claim_run(run_id, "w2")
    assert again is not None and again.attempts == 2
    assert (again.checkpoint, again.checkpoint_epoch) == (b"checkpoint bytes", 2)


def test_reconcile_skips_rows_another_reconciler_holds(q: Any) -> None:
    name, waiting = q
    run_id = new_run(name)
    assert leases.claim_run(run_id, "w1", lease_seconds=30) is not None
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    with get_engine().connect() as other, other.begin(), ThreadPoolExecutor(1) as pool:
        other.execute(select(Run.id).where(Run.id == run_id).with_for_update())
        pool.submit(leases.reconcile).result(timeout=5)  # plain FOR UPDATE would block here
        assert row(run_id).status == "running" and waiting() == 0
    leases.reconcile()
    assert row(run_id).status == "queued" and waiting() == 1


def test_reconcile_ends_runs_that_should_not_run_again(q: Any) -> None:
    past = utcnow() - timedelta(seconds=1)
    cancelled, doomed = new_run(q[0]), new_run(q[0])
    for run_id in (cancelled, doomed):
        assert leases.claim_run(run_id, "w1") is not None
        with session_scope() as s:
            leases.save_checkpoint(s, run_id, 1, b"x")
    set_run(cancelled, lease_expires_at=past, cancel_requested=True)
    set_run(doomed, lease_expires_at=past, attempts=leases.MAX_ATTEMPTS)
    leases.reconcile()
    assert row(cancelled).status == "cancelled"
    assert row(doomed).status == "failed" and "lost 5 times" in (row(doomed).error or "")
    with session_scope() as s:
        assert s.scalars(select(Checkpoint).where(Checkpoint.run_id.in_([cancelled, doomed]))).all() == []
    assert q[1]() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_send_leaves_run_to_the_outbox(q: Any) -> None:
    name, waiting = q
    dead = make_celery(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    run_id = new_run(name)
    assert leases.dispatch_run(run_id, name, app=dead) is False  # logged, never raised
    assert row(run_id).dispatched_at is None
    set_run(run_id, created_at=utcnow() - timedelta(seconds=10))
    leases.reconcile()
    assert row(run_id).dispatched_at is not None and waiting() == 1


def test_reconcile_sends_again_a_message_the_broker_lost(q: Any) -> None:
    name, waiting = q
    run_id = new_run(name)
    assert leases.dispatch_run(run_id, name)
    assert waiting() == 1
    long_ago = utcnow() - timedelta(seconds=Settings().redispatch_seconds + 1)
    set_run(run_id, dispatched_at=long_ago)
    leases.reconcile()
    assert row(run_id).dispatched_at > long_ago and waiting() == 2  # type: ignore[operator]


def test_reconcile_sends_unsent_and_orphaned_lr_finder_jobs(q: Any) -> None:
    name, waiting = q
    old = utcnow() - timedelta(seconds=600)
    with session_scope() as s:
        unsent = LrFinder(status="queued", spec={}, queue=name, created_at=old)
        orphan = LrFinder(status="running", spec={}, queue=name, created_at=old, started_at=old, worker="gone@host")
        s.add_all([unsent, orphan])
    leases.reconcile()
    with session_scope() as s:
        got = [s.get(LrFinder, j.id) for j in (unsent, orphan)]
        assert [(j.status, j.dispatched_at is not None) for j in got if j] == [("queued", True), ("queued", True)]
    assert waiting() == 2


def test_requeued_run_can_be_claimed_the_moment_its_message_arrives(q: Any) -> None:
    """A worker may take the message before the reconciler's transaction ends; the run must be claimable then.

    (A claim does not wait for the reconciler's row lock: the committed row it sees is still `running`, so
    it matches nothing. Sending inside the transaction once left requeued runs to the redispatch timeout.)
    """
    name, _ = q
    run_id = new_run(name)
    assert leases.claim_run(run_id, "w1", lease_seconds=30) is not None
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    app = make_celery()
    claims: list[Any] = []
    send = app.send_task

    def send_and_claim(task: str, *args: Any, **kwargs: Any) -> Any:  # the real send, then a worker's claim
        result = send(task, *args, **kwargs)
        with ThreadPoolExecutor(1) as pool:  # its own connection, as another worker process would have
            claims.append(pool.submit(leases.claim_run, run_id, "w2").result(timeout=10))
        return result

    app.send_task = send_and_claim  # type: ignore[method-assign]
    out = leases.reconcile(app=app)
    assert out.requeued == [run_id] and out.dispatched == [run_id]
    assert claims and claims[0] is not None, "the message arrived before the run was queued"
    assert row(run_id).status == "running" and row(run_id).worker == "w2"


# --- lr-finder jobs: claimed, leased, finished and bounded as runs are ----------------------------------


def new_job(queue: str, **values: Any) -> str:
    with session_scope() as s:
        job = LrFinder(status="queued", spec={}, queue=queue, created_at=utcnow(), **values)
        s.add(job)
        s.flush()
        return job.id


def job_row(job_id: str) -> LrFinder:
    with session_scope() as s:
        found = s.get(LrFinder, job_id)
        assert found is not None
        return found


def set_job(job_id: str, **values: Any) -> None:
    with session_scope() as s:
        s.execute(update(LrFinder).where(LrFinder.id == job_id).values(**values))


def test_claim_lr_finder_once_with_a_lease_that_only_its_holder_renews_and_finishes(q: Any) -> None:
    job_id = new_job(q[0])
    barrier = threading.Barrier(4)

    def claim(i: int) -> leases.JobClaim | None:
        barrier.wait()
        return leases.claim_lr_finder(job_id, f"w{i}", lease_seconds=30)

    with ThreadPoolExecutor(4) as pool:
        claims = [c for c in pool.map(claim, range(4)) if c is not None]
    assert len(claims) == 1 and claims[0].attempts == 1
    got = job_row(job_id)
    assert (got.status, got.attempts, got.lease_token) == ("running", 1, claims[0].token)
    assert got.lease_expires_at is not None and got.lease_expires_at - utcnow() > timedelta(seconds=25)

    assert leases.renew_lr_finder_lease(job_id, "not-mine", 30) == (False, False)
    set_job(job_id, cancel_requested=True)
    assert leases.renew_lr_finder_lease(job_id, claims[0].token, 60) == (True, True)
    assert job_row(job_id).lease_expires_at - utcnow() > timedelta(seconds=55)  # type: ignore[operator]
    assert leases.finish_lr_finder(job_id, "not-mine", status="succeeded") is False
    # a sweep that ends while a cancel is requested is recorded cancelled, with what it found
    assert leases.finish_lr_finder(job_id, claims[0].token, status="succeeded", result={"points": []}) is True
    got = job_row(job_id)
    assert (got.status, got.result, got.lease_token, got.lease_expires_at) == ("cancelled", {"points": []}, None, None)


def test_reconcile_requeues_cancels_or_fails_lr_finder_jobs_whose_lease_lapsed(q: Any) -> None:
    name, waiting = q
    past = utcnow() - timedelta(seconds=1)
    lost, stopping, doomed = new_job(name), new_job(name), new_job(name)
    for job_id in (lost, stopping, doomed):
        assert leases.claim_lr_finder(job_id, "w1", lease_seconds=30) is not None
        set_job(job_id, lease_expires_at=past)
    set_job(stopping, cancel_requested=True)
    set_job(doomed, attempts=leases.MAX_ATTEMPTS)  # claimed and lost five times: it is what kills its workers
    leases.reconcile()
    assert (job_row(lost).status, job_row(lost).lease_token) == ("queued", None)
    assert job_row(lost).dispatched_at is not None and waiting() == 1
    assert job_row(stopping).status == "cancelled"
    doomed_row = job_row(doomed)
    assert doomed_row.status == "failed" and "lost 5 times" in (doomed_row.error or "")
    assert doomed_row.finished_at is not None
    again = leases.claim_lr_finder(lost, "w2")
    assert again is not None and again.attempts == 2
