"""The reconciler over the real Postgres and Redis: expired leases requeued (or ended), rows another reconciler
holds skipped, what carries no stamp sent, lost messages sent again, lr-finder jobs alike.

Other workers of the test session reconcile the same database meanwhile, so assertions are about the state rows
and queues end up in, never about which reconciler got there first.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from lrlab import outbox
from lrlab.broker import make_celery
from lrlab.db import get_engine, session_scope
from lrlab.models import Checkpoint, LrFinder, Run, utcnow
from lrlab.runs import leases, reconciler
from lrlab.settings import Settings
from tests.rows import job_row, new_job, new_run, row, set_job, set_run

pytestmark = pytest.mark.service


def test_reconcile_requeues_expired_lease_and_sends_it(q: Any) -> None:
    name, waiting = q
    run_id = new_run(name)
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None
    with session_scope() as s:
        leases.save_checkpoint(s, run_id, 2, b"checkpoint bytes")
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    reconciler.reconcile()
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
        pool.submit(reconciler.reconcile).result(timeout=5)  # plain FOR UPDATE would block here
        assert row(run_id).status == "running" and waiting() == 0
    reconciler.reconcile()
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
    reconciler.reconcile()
    assert row(cancelled).status == "cancelled"
    assert row(doomed).status == "failed" and "lost 5 times" in (row(doomed).error or "")
    with session_scope() as s:
        assert s.scalars(select(Checkpoint).where(Checkpoint.run_id.in_([cancelled, doomed]))).all() == []
    assert q[1]() == 0


def test_reconcile_sends_again_a_message_the_broker_lost(q: Any) -> None:
    name, waiting = q
    run_id = new_run(name)
    with session_scope() as s:
        queued = outbox.runs(s, [outbox.Target(run_id, name)])
    assert outbox.send(queued) == [run_id] and waiting() == 1
    long_ago = utcnow() - timedelta(seconds=Settings().redispatch_seconds + 1)
    set_run(run_id, dispatched_at=long_ago)
    reconciler.reconcile()
    assert row(run_id).dispatched_at > long_ago and waiting() == 2  # type: ignore[operator]


def test_reconcile_sends_unsent_and_orphaned_lr_finder_jobs(q: Any) -> None:
    name, waiting = q
    old = utcnow() - timedelta(seconds=600)
    with session_scope() as s:
        unsent = LrFinder(status="queued", spec={}, queue=name, created_at=old)
        orphan = LrFinder(status="running", spec={}, queue=name, created_at=old, started_at=old, worker="gone@host")
        s.add_all([unsent, orphan])
    reconciler.reconcile()
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
    out = reconciler.reconcile(app=app)
    assert out.requeued == [run_id] and out.dispatched == [run_id]
    assert claims and claims[0] is not None, "the message arrived before the run was queued"
    assert row(run_id).status == "running" and row(run_id).worker == "w2"


def test_reconcile_requeues_cancels_or_fails_lr_finder_jobs_whose_lease_lapsed(q: Any) -> None:
    name, waiting = q
    past = utcnow() - timedelta(seconds=1)
    lost, stopping, doomed = new_job(name), new_job(name), new_job(name)
    for job_id in (lost, stopping, doomed):
        assert leases.claim_lr_finder(job_id, "w1", lease_seconds=30) is not None
        set_job(job_id, lease_expires_at=past)
    set_job(stopping, cancel_requested=True)
    set_job(doomed, attempts=leases.MAX_ATTEMPTS)  # claimed and lost five times: it is what kills its workers
    reconciler.reconcile()
    assert (job_row(lost).status, job_row(lost).lease_token) == ("queued", None)
    assert job_row(lost).dispatched_at is not None and waiting() == 1
    assert job_row(stopping).status == "cancelled"
    doomed_row = job_row(doomed)
    assert doomed_row.status == "failed" and "lost 5 times" in (doomed_row.error or "")
    assert doomed_row.finished_at is not None
    again = leases.claim_lr_finder(lost, "w2")
    assert again is not None and again.attempts == 2
