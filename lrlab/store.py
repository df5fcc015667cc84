"""Reads and writes of runs and curves, shared by the api (create, list, cancel) and the worker (progress)."""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lrlab.models import CurvePoint, Run, utcnow
from lrlab.schemas import RunPublic, RunSpec, RunStatus, RunSummary
from lrlab.schemas.runs import CurvePoint as CurvePointSchema

POINT_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def create_run(session: Session, spec: RunSpec, queue: str, *, label: str | None = None) -> Run:
    run = Run(
        status=RunStatus.queued.value,
        spec=spec.to_json(),
        dataset=spec.dataset.label,
        optimizer=spec.optimizer.name,
        queue=queue,
        label=label,
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def to_public(run: Run) -> RunPublic:
    return RunPublic(
        id=run.id,
        status=RunStatus(run.status),
        spec=RunSpec.model_validate(run.spec),
        queue=run.queue,
        device=run.device,
        n_parameters=run.n_parameters,
        label=run.label,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        summary=RunSummary.model_validate(run.summary) if run.summary is not None else None,
        cancel_requested=run.cancel_requested,
    )


# --- cursor pagination, newest first ------------------------------------------------------------


def encode_cursor(run: Run) -> str:
    return base64.urlsafe_b64encode(f"{run.created_at.isoformat()}|{run.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor we made."""
    try:
        stamp, run_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), run_id
    except Exception as exc:  # binascii, unicode and split errors all mean the same to a caller
        raise ValueError("not a cursor returned by this API") from exc


def list_runs(
    session: Session,
    *,
    limit: int,
    status: RunStatus | None = None,
    dataset: str | None = None,
    optimizer: str | None = None,
    cursor: str | None = None,
) -> tuple[list[Run], str | None]:
    query = select(Run)
    if status is not None:
        query = query.where(Run.status == status.value)
    if dataset is not None:
        query = query.where(Run.dataset == dataset)
    if optimizer is not None:
        query = query.where(Run.optimizer == optimizer)
    if cursor is not None:
        created_at, run_id = decode_cursor(cursor)
        query = query.where(or_(Run.created_at < created_at, and_(Run.created_at == created_at, Run.id < run_id)))
    rows = list(session.scalars(query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


# --- curves -------------------------------------------------------------------------------------


def point_row(run_id: str, point: dict[str, Any]) -> dict[str, Any]:
    """A trainer point as a row: NaN/inf become NULL and are named in `nonfinite` (JSON has no NaN)."""
    row: dict[str, Any] = {"run_id": run_id, "epoch": int(point["epoch"]), "nonfinite": []}
    for field in POINT_FIELDS:
        value = point.get(field)
        if value is not None and not math.isfinite(value):
            row["nonfinite"].append(field)
            value = None
        row[field] = value
    row["lr"] = float(point["lr"])
    row["seconds"] = float(point["seconds"])
    return row


def upsert_point(session: Session, run_id: str, point: dict[str, Any]) -> None:
    """Insert or overwrite the (run, epoch) row: a redelivered or resumed epoch never duplicates."""
    row = point_row(run_id, point)
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(CurvePoint).values(**row)
    changed = {k: stmt.excluded[k] for k in row if k not in ("run_id", "epoch")}
    session.execute(stmt.on_conflict_do_update(index_elements=["run_id", "epoch"], set_=changed))


def points(session: Session, run_id: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(CurvePoint).where(CurvePoint.run_id == run_id).order_by(CurvePoint.epoch))
    return [
        CurvePointSchema(
            epoch=r.epoch,
            train_loss=r.train_loss,
            train_accuracy=r.train_accuracy,
            val_loss=r.val_loss,
            val_accuracy=r.val_accuracy,
            lr=r.lr,
            seconds=r.seconds,
            nonfinite=list(r.nonfinite or []),
        ).model_dump()
        for r in rows
    ]


# --- status changes -----------------------------------------------------------------------------


def request_cancel(session: Session, run: Run) -> None:
    """Queued: cancelled at once (a worker that later receives it skips it). Running: the worker stops it."""
    if run.status == RunStatus.queued.value:
        moved = session.execute(
            update(Run)
            .where(Run.id == run.id, Run.status == RunStatus.queued.value)
            .values(status=RunStatus.cancelled.value, finished_at=utcnow(), cancel_requested=True)
        ).rowcount  # type: ignore[attr-defined]
        if moved:
            session.refresh(run)
            return
    if run.status == RunStatus.running.value:
        run.cancel_requested = True
