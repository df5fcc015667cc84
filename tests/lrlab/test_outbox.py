"""The outbox over the real Postgres and Redis: work stamped in the transaction that queues it, sent only after
its commit, packed or split by what it is; a send that fails clears its stamp for the reconciler."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from lrlab import outbox
from lrlab.broker import FIND_LR, TRAIN_PACK, TRAIN_PBT, TRAIN_RUN, make_celery
from lrlab.db import session_scope
from lrlab.models import Run, utcnow
from lrlab.runs import reconciler, store
from lrlab.runs.fusing import MAX_PACK_MEMBERS
from lrlab.schemas import RunSpec
from lrlab.settings import Settings
from tests.rows import free_port, new_job, new_run, row, set_run

pytestmark = pytest.mark.service


@pytest.fixture
def sent(service_env: dict[str, str], redis_url: str) -> Iterator[tuple[str, Any]]:
    """A queue no worker consumes, and what waits in it: (task name, its argument), in order."""
    name = f"t{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(redis_url)

    def messages() -> list[tuple[str, Any]]:
        found = []
        for raw in reversed(broker.lrange(name, 0, -1)):  # kombu pushes on the left
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            found.append((message["headers"]["task"], args[0]))
        return found

    yield name, messages
    broker.delete(name)


def dead_broker() -> Celery:
    return make_celery(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))


def new_runs(queue: str, n: int) -> list[Run]:
    with session_scope() as s:
        runs = [store.create_run(s, RunSpec(epochs=1, seed=k), queue) for k in range(n)]
        s.expunge_all()
    return runs


def test_work_is_stamped_with_its_queuing_transaction_and_sent_after_the_commit(sent: Any) -> None:
    name, messages = sent
    with session_scope() as s:
        run = store.create_run(s, RunSpec(epochs=1), name)
        queued = outbox.runs(s, [run])
        assert run.dispatched_at == queued[0].stamp  # stamped in this transaction, before its commit
        run_id = run.id
    assert messages() == []  # nothing went before the commit (nor without a send)
    assert row(run_id).dispatched_at == queued[0].stamp
    assert outbox.send(queued) == [run_id]
    assert messages() == [(TRAIN_RUN, run_id)]


def test_work_rolled_back_is_never_stamped_nor_sent(sent: Any) -> None:
    name, messages = sent
    with pytest.raises(RuntimeError), session_scope() as s:
        run = store.create_run(s, RunSpec(epochs=1), name)
        outbox.runs(s, [run])
        run_id = run.id
        raise RuntimeError("the request failed before its commit")
    with session_scope() as s:
        assert s.get(Run, run_id) is None
    assert messages() == []


def test_failed_send_clears_the_stamp_and_the_reconciler_sends_it(sent: Any) -> None:
    name, messages = sent
    run_id = new_run(name)
    with session_scope() as s:
        queued = outbox.runs(s, [outbox.Target(run_id, name)])
    assert outbox.send(queued, app=dead_broker()) == []  # logged, never raised
    assert row(run_id).dispatched_at is None
    set_run(run_id, created_at=utcnow() - timedelta(seconds=10))
    reconciler.reconcile()
    assert row(run_id).dispatched_at is not None and messages() == [(TRAIN_RUN, run_id)]


def test_failed_send_keeps_a_newer_stamp(sent: Any) -> None:
    name, _ = sent
    run_id = new_run(name)
    with session_scope() as s:
        queued = outbox.runs(s, [outbox.Target(run_id, name)])
    newer = utcnow() + timedelta(seconds=1)
    set_run(run_id, dispatched_at=newer)  # a reconciler sent it meanwhile
    outbox.send(queued, app=dead_broker())
    assert row(run_id).dispatched_at == newer


def test_fused_experiment_goes_in_packs_per_queue_and_a_separate_one_run_by_run(sent: Any) -> None:
    name, messages = sent
    runs = new_runs(name, MAX_PACK_MEMBERS + 3)
    ids = [r.id for r in runs]
    with session_scope() as s:
        fused = outbox.experiment(s, "fused", runs)
    assert outbox.send(fused) == ids
    assert messages() == [(TRAIN_PACK, ids[:MAX_PACK_MEMBERS]), (TRAIN_PACK, ids[MAX_PACK_MEMBERS:])]
    with session_scope() as s:
        separate = outbox.experiment(s, "separate", runs[:2])
    outbox.send(separate)
    assert messages()[2:] == [(TRAIN_RUN, ids[0]), (TRAIN_RUN, ids[1])]


def test_fused_round_that_cannot_be_sent_whole_goes_member_by_member(sent: Any) -> None:
    name, messages = sent
    ids = [r.id for r in new_runs(name, 3)]
    app = make_celery()
    send = app.send_task

    def no_population_task(task: str, *args: Any, **kwargs: Any) -> Any:
        if task == TRAIN_PBT:
            raise ConnectionError("refused")
        return send(task, *args, **kwargs)

    app.send_task = no_population_task  # type: ignore[method-assign]
    with session_scope() as s:
        queued = outbox.population_round(s, "some-population", "fused", name, ids)
    assert [m.task for m in queued] == [TRAIN_PBT]
    assert outbox.send(queued, app=app) == ids
    assert messages() == [(TRAIN_RUN, i) for i in ids]
    assert all(row(i).dispatched_at == queued[0].stamp for i in ids)


def test_distributed_round_and_lr_finder_jobs(sent: Any) -> None:
    name, messages = sent
    ids = [r.id for r in new_runs(name, 2)]
    job_id = new_job(name)
    with session_scope() as s:
        queued = outbox.population_round(s, "some-population", "distributed", name, ids)
        queued += outbox.lr_finders(s, [outbox.Target(job_id, name)])
    assert outbox.send(queued) == [*ids, job_id]
    assert messages() == [(TRAIN_RUN, ids[0]), (TRAIN_RUN, ids[1]), (FIND_LR, job_id)]
