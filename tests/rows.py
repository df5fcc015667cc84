"""Rows written and read straight through the database, for the tests of the run store, leases, the outbox, the
reconciler and the progress writer (real Postgres and Redis)."""

from __future__ import annotations

import socket
from typing import Any

from celery import Celery
from sqlalchemy import select, update

from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import CurvePoint, LrFinder, Run, utcnow
from lrlab.runs import store
from lrlab.schemas import RunSpec


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


def pt(epoch: int) -> dict[str, Any]:
    """A trainer point of epoch `epoch`."""
    return {
        "epoch": epoch,
        "train_loss": 1.0,
        "train_accuracy": 0.5,
        "val_loss": 1.0,
        "val_accuracy": 0.5,
        "lr": 0.1,
        "seconds": 0.01,
    }


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(kind: str, ids: list[str], queue: str, *, app: Celery | None = None) -> list[str]:
    """Queue rows made by hand through the outbox, as the api would: `runs`, a fused `pack`, or `lr_finders`."""
    targets = [outbox.Target(i, queue) for i in ids]
    with session_scope() as s:
        if kind == "pack":
            messages = outbox.experiment(s, "fused", targets)
        else:
            messages = outbox.lr_finders(s, targets) if kind == "lr_finders" else outbox.runs(s, targets)
    return outbox.send(messages, app=app)
