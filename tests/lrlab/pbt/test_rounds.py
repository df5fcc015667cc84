"""A population's rounds in the database, over the real Postgres and Redis: the first round sent as every later
one is (stamped in the transaction that queues it), and members racing to a round boundary from threads of
their own (each its own connection, as workers would): exactly one of them decides the round.

(Unstamped, a fused population's first round once looked unsent to the reconciler after the outbox grace, and
it sent each member as a run task of its own beside the population's task: the round split.)
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import Pbt, PbtEvent, PbtMember, Run, utcnow
from lrlab.pbt import rounds
from lrlab.runs import leases, reconciler, store
from lrlab.schemas.pbt import PbtCreate

pytestmark = pytest.mark.service

REQUEST = {
    "name": "first round",
    "base": {"dataset": "spirals", "device": "cpu"},
    "population": 4,
    "epochs": 2,
    "interval": 1,
    "mutations": {"lr": {"log_uniform": [1e-3, 1e-1]}},
}


@pytest.fixture
def q(service_env: dict[str, str], redis_url: str) -> Iterator[tuple[str, Any]]:
    """A queue no worker consumes, and what waits in it: the task names, in order."""
    name = f"t{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(redis_url)

    def tasks() -> list[str]:
        return [json.loads(m)["headers"]["task"] for m in broker.lrange(name, 0, -1)]

    yield name, tasks
    broker.delete(name)


@pytest.mark.parametrize("execution", ["fused", "distributed"])
def test_first_round_is_stamped_when_queued_and_not_sent_again_by_the_reconciler(q: Any, execution: str) -> None:
    name, tasks = q
    request = PbtCreate.model_validate({**REQUEST, "execution": execution})
    with session_scope() as s:  # what POST /v1/pbt does: create, commit, then send
        pbt, runs, messages = rounds.create(s, request, owner="first-round", queue=name)
        ids = [r.id for r in runs]
        assert all(r.dispatched_at is not None for r in runs)  # stamped before the commit
    outbox.send(messages)
    expected = ["lrlab.train_pbt"] if execution == "fused" else ["lrlab.train_run"] * 4
    assert tasks() == expected

    # the outbox grace is long past: a reconciler pass finds nothing of this population to send
    with session_scope() as s:
        s.execute(update(Run).where(Run.id.in_(ids)).values(created_at=utcnow() - timedelta(seconds=30)))
    out = reconciler.reconcile()
    assert not set(ids) & set(out.dispatched)
    assert tasks() == expected  # still one task for the fused round: it trains as one pack
    with session_scope() as s:
        assert set(s.scalars(select(Run.status).where(Run.id.in_(ids)))) == {"queued"}
        rounds.cancel(s, s.get(Pbt, pbt.id))  # type: ignore[arg-type]


# --- members reaching a boundary together -----------------------------------------------------------------

RACE = {**REQUEST, "name": "race", "execution": "distributed", "epochs": 2, "interval": 1}


def _population(queue: str, **changes: Any) -> tuple[str, list[leases.Claim]]:
    """A population on `queue`, its first round sent and every member claimed, as workers would."""
    with session_scope() as s:
        pbt, runs, messages = rounds.create(s, PbtCreate.model_validate({**RACE, **changes}), owner="race", queue=queue)
        pbt_id, ids = pbt.id, [r.id for r in runs]
    outbox.send(messages)
    claims = [leases.claim_run(run_id, f"worker-{k}") for k, run_id in enumerate(ids)]
    assert all(claims)
    return pbt_id, [c for c in claims if c is not None]


def _train(claims: list[leases.Claim], epoch: int) -> None:
    """Each member's point of `epoch` (member k scores k/10), as its progress writer stores it."""
    with session_scope() as s:
        for k, claim in enumerate(claims):
            point = {"epoch": epoch, "val_accuracy": k / 10, "val_loss": 1.0, "lr": 0.01, "seconds": 0.1}
            store.upsert_points(s, claim.run_id, [point])


def _race(claims: list[leases.Claim], epoch: int, outcome: dict[str, Any] | None = None) -> list[Any]:
    """Every member reaches `epoch` at once, each from a thread of its own."""
    barrier = threading.Barrier(len(claims))

    def reach(claim: leases.Claim) -> Any:
        barrier.wait()
        return rounds.reach(claim.run_id, claim.token, epoch, outcome)

    with ThreadPoolExecutor(len(claims)) as pool:
        return list(pool.map(reach, claims))


@pytest.mark.parametrize("attempt", range(3))
def test_members_reaching_a_boundary_together_decide_the_round_once(q: Any, attempt: int) -> None:
    name, tasks = q
    pbt_id, claims = _population(name)
    _train(claims, 1)
    results = _race(claims, 1)

    assert all(recorded for recorded, _ in results)
    deciders = [messages for _, messages in results if messages]
    assert len(deciders) == 1, "exactly one member decides the round"
    ids = [c.run_id for c in claims]
    assert sorted(i for m in deciders[0] for i in m.ids) == sorted(ids)
    outbox.send(deciders[0])
    assert tasks() == ["lrlab.train_run"] * 4 * 2  # the first round's messages, then the second's
    with session_scope() as s:
        pbt = s.get(Pbt, pbt_id)
        assert pbt is not None and pbt.boundary == 1 and pbt.status == "queued"
        events = s.scalars(select(PbtEvent).where(PbtEvent.pbt_id == pbt_id)).all()
        assert [(e.epoch, e.target) for e in events] == [(1, 0)]  # the worst member (0) replaced, once
        members = s.scalars(select(PbtMember).where(PbtMember.pbt_id == pbt_id).order_by(PbtMember.member)).all()
        assert [m.epoch for m in members] == [1] * 4 and members[0].weights_from == events[0].source
        runs = s.scalars(select(Run).where(Run.id.in_(ids))).all()
        assert {(r.status, r.lease_token, r.attempts) for r in runs} == {("queued", None, 0)}
        assert len({r.dispatched_at for r in runs}) == 1 and runs[0].dispatched_at is not None
        rounds.cancel(s, pbt)


def test_members_reaching_the_last_epoch_together_finish_the_population_once(q: Any) -> None:
    pbt_id, claims = _population(q[0], epochs=1)
    _train(claims, 1)
    outcome = {"status": "succeeded", "summary": None, "n_parameters": 10}
    results = _race(claims, 1, outcome)
    assert [recorded for recorded, _ in results] == [True] * 4
    assert [messages for _, messages in results] == [[]] * 4  # nothing more to train
    with session_scope() as s:
        pbt = s.get(Pbt, pbt_id)
        assert pbt is not None and (pbt.status, pbt.boundary) == ("succeeded", 1) and pbt.finished_at is not None
        runs = s.scalars(select(Run).where(Run.pbt_id == pbt_id)).all()
        assert {(r.status, r.n_parameters) for r in runs} == {("succeeded", 10)}
        assert s.scalars(select(PbtEvent).where(PbtEvent.pbt_id == pbt_id)).all() == []


def test_a_member_failing_while_the_others_reach_the_boundary_ends_the_population(q: Any) -> None:
    pbt_id, claims = _population(q[0])
    _train(claims, 1)
    failing, others = claims[0], claims[1:]
    barrier = threading.Barrier(len(claims))

    def fail() -> list[Any]:
        barrier.wait()
        assert leases.finish_run(failing.run_id, failing.token, status="failed", error="boom")
        rounds.end_member(failing.run_id)
        return []

    def reach(claim: leases.Claim) -> list[Any]:
        barrier.wait()
        recorded, messages = rounds.reach(claim.run_id, claim.token, 1, None)
        assert recorded
        return messages

    with ThreadPoolExecutor(len(claims)) as pool:
        futures = [pool.submit(fail)] + [pool.submit(reach, c) for c in others]
        assert [f.result() for f in futures] == [[]] * 4  # no round: a member never reached it
    with session_scope() as s:
        pbt = s.get(Pbt, pbt_id)
        assert pbt is not None and pbt.status == "failed" and f"member run {failing.run_id} failed" in (pbt.error or "")
        runs = {r.id: r.status for r in s.scalars(select(Run).where(Run.pbt_id == pbt_id))}
        assert runs == {failing.run_id: "failed", **{c.run_id: "cancelled" for c in others}}


def test_a_member_whose_lease_was_lost_cannot_reach(q: Any) -> None:
    pbt_id, claims = _population(q[0])
    _train(claims, 1)
    assert rounds.reach(claims[0].run_id, "not-mine", 1, None) == (False, [])
    with session_scope() as s:
        member = s.scalars(select(PbtMember).where(PbtMember.run_id == claims[0].run_id)).one()
        assert member.epoch == 0
        rounds.cancel(s, s.get(Pbt, pbt_id))  # type: ignore[arg-type]
