"""worker/steps.py's outcomes: one that can't be written for what it holds ends the run or job `failed`, saying
why, at once; none is written without the lease.

Such a write fails the same way on every attempt: left to the lease, the run would be trained again up to
MAX_ATTEMPTS times and end with a reason that blames its workers (and an lr-finder job would loop).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from lrlab.db import session_scope
from lrlab.models import LrFinder, Run, utcnow
from lrlab.runs import leases, store
from lrlab.schemas import RunSpec
from worker.steps import record_failure, record_run
from worker.sweep import record

pytestmark = pytest.mark.service

UNWRITABLE = {"note": object()}  # no JSON for it: the write fails however often it is tried


@pytest.fixture
def queue_name(service_env: dict[str, str]) -> str:
    return f"t{uuid.uuid4().hex[:8]}"  # consumed by no worker


def test_run_whose_outcome_cannot_be_written_is_failed_with_the_reason(queue_name: str) -> None:
    with session_scope() as s:
        run_id = store.create_run(s, RunSpec(epochs=1), queue_name).id
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None

    def outcome() -> dict[str, Any]:
        return {"status": "succeeded", "summary": UNWRITABLE}

    assert record_run(run_id, claim.token, outcome) is True
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run is not None
        assert (run.status, run.lease_token, run.summary) == ("failed", None, None)
        assert run.error is not None and run.error.startswith("its outcome could not be recorded: ")


def test_run_outcome_is_not_written_without_the_lease(queue_name: str) -> None:
    with session_scope() as s:
        run_id = store.create_run(s, RunSpec(epochs=1), queue_name).id
    assert leases.claim_run(run_id, "w1", lease_seconds=30) is not None
    assert record_run(run_id, "a lapsed token", lambda: {"status": "succeeded", "summary": UNWRITABLE}) is False
    with session_scope() as s:
        assert s.get(Run, run_id).status == "running"  # type: ignore[union-attr]


def test_lr_finder_job_whose_result_cannot_be_written_is_failed_with_the_reason(queue_name: str) -> None:
    with session_scope() as s:
        job = LrFinder(status="queued", spec={}, queue=queue_name, created_at=utcnow())
        s.add(job)
        s.flush()
        job_id = job.id
    claim = leases.claim_lr_finder(job_id, "w1", lease_seconds=30)
    assert claim is not None
    assert record(claim, {"status": "succeeded", "result": UNWRITABLE}) is True
    with session_scope() as s:
        got = s.get(LrFinder, job_id)
        assert got is not None
        assert (got.status, got.result, got.lease_token) == ("failed", None, None)
        assert got.error is not None and got.error.startswith("its outcome could not be recorded: ")


def test_failure_is_recorded_with_its_reason_only_under_the_lease(queue_name: str) -> None:
    with session_scope() as s:
        run_id = store.create_run(s, RunSpec(epochs=1), queue_name).id
    claim = leases.claim_run(run_id, "w1", lease_seconds=30)
    assert claim is not None
    boom = ValueError("Invalid learning rate: -1" + "!" * 5000)
    assert record_failure(run_id, "a lapsed token", boom) is False
    assert record_failure(run_id, claim.token, boom) is True
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run is not None and run.status == "failed" and run.lease_token is None
        assert run.error is not None and run.error.startswith("ValueError: Invalid learning rate: -1")
        assert len(run.error) == 4000


def test_checkpointer_first_due_a_period_into_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most one checkpoint per `every` seconds, the first `every` seconds in (not at epoch 1); 0: every epoch."""
    from worker import steps

    clock = [100.0]
    monkeypatch.setattr(steps.time, "monotonic", lambda: clock[0])

    class Writer:
        actions: list[object] = []

        def shutdown_due(self) -> bool:
            return False

        def put_action(self, action: object) -> None:
            self.actions.append(action)

    due, save = steps.checkpointer("r", Writer(), 5.0)  # type: ignore[arg-type]
    assert not due(1)
    clock[0] += 4.9
    assert not due(2)
    clock[0] += 0.2
    assert due(3)
    save(type("C", (), {"epoch": 3})())  # type: ignore[arg-type]
    assert not due(4)
    every_epoch, _ = steps.checkpointer("r", Writer(), 0.0)  # type: ignore[arg-type]
    assert every_epoch(1) and every_epoch(2)
