"""A population's first round is sent as every later one is: stamped in the transaction that queues it.

Unstamped, a fused population's members looked unsent to the reconciler once the outbox grace had passed,
and it sent each one as a run task of its own beside the population's task: the round split.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from lrlab import leases
from lrlab.db import session_scope
from lrlab.models import Pbt, Run, utcnow
from lrlab.pbt import rounds
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
        pbt, runs = rounds.create(s, request, owner="first-round", queue=name)
        ids = [r.id for r in runs]
        assert all(r.dispatched_at is not None for r in runs)  # stamped before the commit
    rounds.dispatch(rounds.Dispatch(pbt.id, pbt.execution, name, ids))
    expected = ["lrlab.train_pbt"] if execution == "fused" else ["lrlab.train_run"] * 4
    assert tasks() == expected

    # the outbox grace is long past: a reconciler pass finds nothing of this population to send
    with session_scope() as s:
        s.execute(update(Run).where(Run.id.in_(ids)).values(created_at=utcnow() - timedelta(seconds=30)))
    out = leases.reconcile()
    assert not set(ids) & set(out.dispatched)
    assert tasks() == expected  # still one task for the fused round: it trains as one pack
    with session_scope() as s:
        assert set(s.scalars(select(Run.status).where(Run.id.in_(ids)))) == {"queued"}
        rounds.cancel(s, s.get(Pbt, pbt.id))  # type: ignore[arg-type]
