"""The reconciler advances a search that has not moved (real Postgres and Redis): its first message never sent,
or nothing heard of it for LRLAB_REDISPATCH_SECONDS; a finished search is left alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from lrlab.db import session_scope
from lrlab.models import LOCAL_OWNER, Search, utcnow
from lrlab.runs import reconciler, store
from lrlab.schemas import RunSpec
from lrlab.schemas.search import SearchCreate
from lrlab.search import driver

pytestmark = pytest.mark.service

REQUEST = SearchCreate.model_validate({"space": {"lr": {"log_uniform": [1e-3, 1e-1]}}, "trials": 2, "parallel": 1})


def _search(queue: str, **values: Any) -> str:
    with session_scope() as s:
        search, _ = driver.create(s, REQUEST, owner=LOCAL_OWNER)  # its message is dropped: never sent
        search.queue = queue
        for k, v in values.items():
            setattr(search, k, v)
        return search.id


def test_unsent_and_stale_searches_are_advanced(q: Any) -> None:
    queue, waiting = q
    long_ago = utcnow() - timedelta(hours=1)
    unsent = _search(queue, dispatched_at=None, created_at=long_ago)
    stale = _search(queue, status="running", dispatched_at=long_ago, created_at=long_ago)
    fresh = _search(queue)  # stamped just now: its message is on its way
    done = _search(queue, status="succeeded", dispatched_at=long_ago, created_at=long_ago)
    out = reconciler.reconcile()
    assert {unsent, stale} <= set(out.searches_dispatched)
    assert fresh not in out.searches_dispatched and done not in out.searches_dispatched
    assert waiting() >= 2
    with session_scope() as s:
        assert s.get(Search, unsent).dispatched_at is not None  # type: ignore[union-attr]
        s.execute(update(Search).where(Search.id.in_([unsent, stale, fresh, done])).values(status="cancelled"))


def test_a_running_search_with_no_trial_left_to_train_is_advanced_soon(q: Any) -> None:
    """Its last trial runs ended outside a worker (a cancel through the api, a run failed by the reconciler):
    nobody advanced it, and it moves on after IDLE_SEARCH_SECONDS rather than after redispatch_seconds."""
    queue, _ = q
    idle_for = timedelta(seconds=reconciler.IDLE_SEARCH_SECONDS + 5)
    idle = _search(queue, status="running", dispatched_at=utcnow() - idle_for)
    just_moved = _search(queue, status="running", dispatched_at=utcnow())
    training = _search(queue, status="running", dispatched_at=utcnow() - idle_for)
    ended = _search(queue, status="running", dispatched_at=utcnow() - idle_for)
    with session_scope() as s:
        for search_id, status in ((training, "queued"), (ended, "cancelled"), (idle, "failed")):
            run = store.create_run(s, RunSpec(epochs=1), queue)
            run.search_id, run.trial, run.status = search_id, 0, status
    out = reconciler.reconcile()
    assert {idle, ended} <= set(out.searches_dispatched)
    assert just_moved not in out.searches_dispatched and training not in out.searches_dispatched
    with session_scope() as s:
        s.execute(update(Search).where(Search.id.in_([idle, just_moved, training, ended])).values(status="cancelled"))
