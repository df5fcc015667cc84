"""worker/pbt.py with its checkpoints in S3 (a moto server): a member's interval stores its boundary checkpoint in
the bucket and the next interval starts from it; a worker whose lease lapsed meanwhile (its host cut off, then
back) stores nothing, neither in the bucket nor in the database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import CurvePoint, Pbt, PbtMember, Run, utcnow
from lrlab.pbt import rounds
from lrlab.runs import leases, reconciler
from lrlab.schemas.pbt import PbtCreate
from tests.api.test_access import settings_env
from tests.storage_fixtures import MotoServer, moto_server, s3_bucket, s3_env
from worker import pbt as member_path

__all__ = ["moto_server", "s3_bucket", "s3_env"]

pytestmark = pytest.mark.service

REQUEST = {
    "name": "members in s3",
    "base": {"dataset": "spirals", "device": "cpu", "model": {"name": "mlp", "hidden": [8]}},
    "population": 2,
    "epochs": 2,
    "interval": 1,
    "execution": "distributed",
    "mutations": {"lr": {"log_uniform": [1e-3, 1e-1]}},
}


@pytest.fixture
def population(service_env: dict[str, str], s3_bucket: str) -> Iterator[tuple[str, list[str]]]:
    """A distributed population on a queue no worker consumes, its checkpoints in the bucket: (pbt id, run ids)."""
    queue = f"t{uuid.uuid4().hex[:8]}"
    with settings_env(LRLAB_STORAGE_URL=f"s3://{s3_bucket}/lab"):
        with session_scope() as s:
            found, runs, messages = rounds.create(s, PbtCreate.model_validate(REQUEST), owner="s3", queue=queue)
            pbt_id, ids = found.id, [r.id for r in runs]
        outbox.send(messages)
        yield pbt_id, ids
        with session_scope() as s:
            rounds.cancel(s, s.get(Pbt, pbt_id))  # type: ignore[arg-type]


def _objects(moto: MotoServer, bucket: str) -> set[str]:
    return set(moto.objects(bucket))


def _lapse(run_id: str) -> None:
    """The member's lease runs out and a reconciler queues it again (what happens while its host is cut off)."""
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    reconciler.reconcile()


def test_a_member_stores_its_boundary_checkpoint_in_the_bucket(
    population: tuple[str, list[str]], moto_server: MotoServer, s3_bucket: str
) -> None:
    pbt_id, ids = population
    claim = leases.claim_run(ids[0], "worker-a")
    assert claim is not None
    member_path.train_member(claim)
    assert _objects(moto_server, s3_bucket) == {f"lab/checkpoints/pbt/{pbt_id}/0/1"}
    with session_scope() as s:
        member = s.scalars(select(PbtMember).where(PbtMember.run_id == ids[0])).one()
        assert member.epoch == 1  # reached, recorded under the lease
        assert list(s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == ids[0]))) == [1]


def test_a_stale_worker_stores_nothing(
    population: tuple[str, list[str]], moto_server: MotoServer, s3_bucket: str
) -> None:
    pbt_id, ids = population
    stale = leases.claim_run(ids[0], "worker-cut-off")
    assert stale is not None
    _lapse(ids[0])
    fresh = leases.claim_run(ids[0], "worker-b")  # the member is someone else's now
    assert fresh is not None and fresh.token != stale.token

    member_path.train_member(stale)  # the cut-off worker comes back and trains on, as if nothing happened
    assert _objects(moto_server, s3_bucket) == set()
    with session_scope() as s:
        run: Any = s.get(Run, ids[0])
        assert (run.status, run.lease_token, run.worker) == ("running", fresh.token, "worker-b")
        assert list(s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == ids[0]))) == []
        assert s.scalars(select(PbtMember.epoch).where(PbtMember.run_id == ids[0])).one() == 0

    member_path.train_member(fresh)  # the worker that holds it stores the checkpoint
    assert _objects(moto_server, s3_bucket) == {f"lab/checkpoints/pbt/{pbt_id}/0/1"}
