"""Claims, leases and outcomes of runs and lr-finder jobs over the real Postgres: one claim among racing workers,
a lease only its holder renews and finishes, a run handed back by a worker shutting down."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from lrlab.db import session_scope
from lrlab.models import Checkpoint, utcnow
from lrlab.runs import leases
from tests.rows import job_row, new_job, new_run, row, set_job, set_run

pytestmark = pytest.mark.service


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


def test_release_run_hands_it_back_queued_unsent_keeping_its_checkpoint_and_attempts(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None and claim.attempts == 1
    with session_scope() as s:
        leases.save_checkpoint(s, run_id, 2, b"epoch 2")
    assert leases.release_run(run_id, "not-mine") is False
    assert leases.release_run(run_id, claim.token) is True
    got = row(run_id)
    assert (got.status, got.lease_token, got.dispatched_at, got.attempts) == ("queued", None, None, 0)
    again = leases.claim_run(run_id, "w2")  # the next worker resumes from the checkpoint; a hand-back is no loss
    assert again is not None and again.attempts == 1 and (again.checkpoint, again.checkpoint_epoch) == (b"epoch 2", 2)


def test_release_run_asked_to_stop_ends_it_cancelled(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None
    with session_scope() as s:
        leases.save_checkpoint(s, run_id, 1, b"x")
    set_run(run_id, cancel_requested=True)
    assert leases.release_run(run_id, claim.token) is True
    got = row(run_id)
    assert got.status == "cancelled" and got.finished_at is not None and got.lease_token is None
    with session_scope() as s:
        assert s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)).all() == []


def test_finish_run_records_only_under_its_own_lease(q: Any) -> None:
    run_id = new_run(q[0])
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None
    set_run(run_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    assert leases.finish_run(run_id, "not-mine", status="succeeded") is False
    assert row(run_id).status == "running"
    assert leases.finish_run(run_id, claim.token, status="succeeded") is True
    got = row(run_id)
    assert (got.status, got.lease_token, got.lease_expires_at) == ("succeeded", None, None)
    assert leases.finish_run(run_id, claim.token, status="failed") is False  # an outcome is recorded once


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


def test_release_lr_finder_hands_it_back_queued_unsent_without_counting_the_attempt(q: Any) -> None:
    job_id = new_job(q[0])
    claim = leases.claim_lr_finder(job_id, "w1", lease_seconds=30)
    assert claim is not None and claim.attempts == 1
    assert leases.release_lr_finder(job_id, "not-mine") is False
    assert leases.release_lr_finder(job_id, claim.token) is True
    got = job_row(job_id)
    assert (got.status, got.lease_token, got.lease_expires_at, got.dispatched_at, got.attempts) == (
        "queued",
        None,
        None,
        None,
        0,
    )
    assert leases.release_lr_finder(job_id, claim.token) is False  # once: the lease is gone
    again = leases.claim_lr_finder(job_id, "w2", lease_seconds=30)
    assert again is not None and again.attempts == 1


def test_release_lr_finder_asked_to_stop_ends_it_cancelled(q: Any) -> None:
    job_id = new_job(q[0])
    claim = leases.claim_lr_finder(job_id, "w1", lease_seconds=30)
    assert claim is not None
    set_job(job_id, cancel_requested=True)
    assert leases.release_lr_finder(job_id, claim.token) is True
    got = job_row(job_id)
    assert (got.status, got.lease_token) == ("cancelled", None) and got.finished_at is not None


def test_claim_runs_takes_the_queued_ones_once_in_one_transaction(q: Any) -> None:
    """A pack's claim: each member as claim_run would claim it (its checkpoint, its later points dropped), only
    those still queued, each by one of several racing workers."""
    from lrlab.runs import store
    from tests.rows import epochs, pt

    ids = [new_run(q[0]) for _ in range(6)]
    set_run(ids[1], status="cancelled")
    with session_scope() as s:
        leases.save_checkpoint(s, ids[2], 2, b"epoch 2")
        store.upsert_points(s, ids[2], [pt(e) for e in (1, 2, 3, 4)])
        store.upsert_points(s, ids[3], [pt(1)])
    barrier = threading.Barrier(4)

    def claim(i: int) -> list[leases.Claim]:
        barrier.wait()
        return leases.claim_runs(ids, f"w{i}", lease_seconds=30)

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(claim, range(4)))
    claimed = [c for b in batches for c in b]
    assert sorted(c.run_id for c in claimed) == sorted(set(ids) - {ids[1]})
    winner = next(b for b in batches if b)
    assert [c.run_id for c in winner] == [i for i in ids if i != ids[1]]  # all by one worker, in the pack's order
    by_id = {c.run_id: c for c in claimed}
    assert (by_id[ids[2]].checkpoint, by_id[ids[2]].checkpoint_epoch) == (b"epoch 2", 2)
    assert (by_id[ids[0]].checkpoint, by_id[ids[0]].checkpoint_epoch) == (None, 0)
    assert epochs(ids[2]) == [1, 2] and epochs(ids[3]) == []  # past the checkpoint, trained again
    for run_id in by_id:
        got = row(run_id)
        assert (got.status, got.attempts, got.lease_token) == ("running", 1, by_id[run_id].token)
    assert row(ids[1]).status == "cancelled"


def test_finish_runs_records_only_where_the_lease_is_still_the_tokens(q: Any) -> None:
    ids = [new_run(q[0]) for _ in range(3)]
    claims = leases.claim_runs(ids, "w1", lease_seconds=30)
    with session_scope() as s:
        for c in claims:
            leases.save_checkpoint(s, c.run_id, 1, b"x")
    set_run(ids[1], lease_token="someone-else")
    done = leases.finish_runs([(c.run_id, c.token, {"status": "succeeded"}) for c in claims])
    assert done == [True, False, True]
    assert [row(i).status for i in ids] == ["succeeded", "running", "succeeded"]
    assert row(ids[0]).lease_token is None and row(ids[0]).finished_at is not None
    with session_scope() as s:
        kept = set(s.scalars(select(Checkpoint.run_id).where(Checkpoint.run_id.in_(ids))))
    assert kept == {ids[1]}
