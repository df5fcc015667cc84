"""worker/sweep.py: a range test cut short by a worker shutting down is handed back (queued at once, the attempt
not counted, no partial result) rather than recorded half-swept or left running until its lease lapses; one
asked to stop ends cancelled; one that ends on its own is recorded as before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lrlab.runs import leases
from tests.rows import job_row, new_job, set_job
from worker import progress, sweep

pytestmark = pytest.mark.service

SPEC = {"dataset": "blobs", "model": {"name": "mlp", "hidden": [8]}, "batch_size": 16, "steps": 400}


@pytest.fixture
def shutting_down() -> Iterator[None]:
    progress.shutting_down.set()
    try:
        yield
    finally:
        progress.shutting_down.clear()


def _claimed(queue: str, **values: Any) -> leases.JobClaim:
    job_id = new_job(queue)
    set_job(job_id, spec=SPEC, **values)
    claim = leases.claim_lr_finder(job_id, "w1", lease_seconds=30)
    assert claim is not None
    return claim


def test_a_sweep_stopped_by_shutdown_is_handed_back(q: Any, shutting_down: None) -> None:
    claim = _claimed(q[0])
    sweep.sweep(claim)
    got = job_row(claim.job_id)
    assert (got.status, got.lease_token, got.dispatched_at, got.attempts, got.result) == ("queued", None, None, 0, None)


def test_a_sweep_cancelled_during_shutdown_ends_cancelled(q: Any, shutting_down: None) -> None:
    claim = _claimed(q[0], cancel_requested=True)
    sweep.sweep(claim)
    got = job_row(claim.job_id)
    assert (got.status, got.lease_token) == ("cancelled", None) and got.finished_at is not None


def test_a_sweep_without_shutdown_is_recorded(q: Any) -> None:
    claim = _claimed(q[0])
    sweep.sweep(claim)
    got = job_row(claim.job_id)
    assert got.status == "succeeded" and got.result is not None and got.result["points"]
