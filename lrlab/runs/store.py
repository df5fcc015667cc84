"""Reads and writes of runs and curves, shared by the api (create, list, cancel) and the worker (progress)."""

from __future__ import annotations

import base64
import math
import time
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import JSON, Connection, Select, and_, bindparam, or_, select, text, update
from sqlalchemy.orm import Session, object_session

from lrlab import broker
from lrlab.models import LOCAL_OWNER, CurvePoint, Run, utcnow
from lrlab.schemas import RunPublic, RunSpec, RunStatus, RunSummary

POINT_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def create_run(
    session: Session,
    spec: RunSpec,
    queue: str,
    *,
    label: str | None = None,
    experiment_id: str | None = None,
    params: dict[str, Any] | None = None,
    owner: str = LOCAL_OWNER,
) -> Run:
    run = Run(
        owner=owner,
        experiment_id=experiment_id,
        params=params,
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
        experiment_id=run.experiment_id,
        params=run.params,
        pack_id=run.pack_id,
        not_fused_reason=run.not_fused_reason,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        summary=RunSummary.model_validate(run.summary) if run.summary is not None else None,
        cancel_requested=run.cancel_requested,
        waiting_reason=_waiting_reason(run),
    )


_LIVE_QUEUES = "lrlab.live_queues"
LIVE_QUEUES_SECONDS = 1.0  # a page of runs reads the heartbeats once, not once per run


def _waiting_reason(run: Run) -> str | None:
    """Why a queued run waits (no live worker serves its queue), read from the heartbeats of its own session."""
    session = object_session(run)
    if run.status != RunStatus.queued.value or session is None:
        return None
    now = time.monotonic()
    cached = session.info.get(_LIVE_QUEUES)
    if cached is None or now - cached[0] > LIVE_QUEUES_SECONDS:
        cached = session.info[_LIVE_QUEUES] = (now, broker.live_queues(session))
    return broker.waiting_reason(run.queue, cached[1])


# --- cursor pagination, newest first ------------------------------------------------------------


class Paged(Protocol):
    id: Any
    created_at: Any


def encode_cursor(row: Paged) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor we made."""
    try:
        stamp, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), row_id
    except Exception as exc:  # binascii, unicode and split errors all mean the same to a caller
        raise ValueError("not a cursor returned by this API") from exc


def page(
    session: Session, query: Select[Any], model: Any, *, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """One page of `query` newest first (created_at, id), and the cursor of the next page if there is one."""
    if cursor is not None:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < row_id)))
    rows = list(session.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


def list_runs(
    session: Session,
    *,
    owner: str,
    limit: int,
    status: RunStatus | None = None,
    dataset: str | None = None,
    optimizer: str | None = None,
    cursor: str | None = None,
) -> tuple[list[Run], str | None]:
    query = select(Run).where(Run.owner == owner)
    if status is not None:
        query = query.where(Run.status == status.value)
    if dataset is not None:
        query = query.where(Run.dataset == dataset)
    if optimizer is not None:
        query = query.where(Run.optimizer == optimizer)
    return page(session, query, Run, limit=limit, cursor=cursor)


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


# One statement text for Postgres and SQLite (both speak ON CONFLICT ... excluded), prepared once: the
# worker writes a point per epoch, and the ORM's per-call CPU overhead would slow training (docs/benchmarks.md).
UPSERT_POINT = text(
    "INSERT INTO curve_point (run_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds,"
    " nonfinite) VALUES (:run_id, :epoch, :train_loss, :train_accuracy, :val_loss, :val_accuracy, :lr, :seconds,"
    " :nonfinite) ON CONFLICT (run_id, epoch) DO UPDATE SET train_loss = excluded.train_loss,"
    " train_accuracy = excluded.train_accuracy, val_loss = excluded.val_loss, val_accuracy = excluded.val_accuracy,"
    " lr = excluded.lr, seconds = excluded.seconds, nonfinite = excluded.nonfinite"
).bindparams(bindparam("nonfinite", type_=JSON))
CANCEL_REQUESTED = text("SELECT cancel_requested FROM run WHERE id = :id")


def upsert_points(conn: Connection | Session, run_id: str, pts: list[dict[str, Any]]) -> None:
    """Insert or overwrite (run, epoch) rows: a redelivered or resumed epoch never duplicates."""
    if pts:
        conn.execute(UPSERT_POINT, [point_row(run_id, p) for p in pts])


def cancel_requested(conn: Connection | Session, run_id: str) -> bool:
    return bool(conn.execute(CANCEL_REQUESTED, {"id": run_id}).scalar())


def point_public(row: CurvePoint) -> dict[str, Any]:
    return {
        "epoch": row.epoch,
        "train_loss": row.train_loss,
        "train_accuracy": row.train_accuracy,
        "val_loss": row.val_loss,
        "val_accuracy": row.val_accuracy,
        "lr": row.lr,
        "seconds": row.seconds,
        "nonfinite": list(row.nonfinite or []),
    }


_POINT_COLUMNS = (CurvePoint.epoch, *(getattr(CurvePoint, f) for f in (*POINT_FIELDS, "lr", "seconds")))


def _point(row: Any) -> dict[str, Any]:
    """A point_public dict from a plain row; a value stored not finite (by a writer other than point_row's) is
    None and named in `nonfinite`, as point_row would have stored it."""
    point = dict(zip(("epoch", *POINT_FIELDS, "lr", "seconds"), row[:-1], strict=True))
    flags = list(row[-1] or [])
    for field in POINT_FIELDS:
        value = point[field]
        if value is not None and not math.isfinite(value):
            point[field] = None
            if field not in flags:
                flags.append(field)
    point["nonfinite"] = flags
    return point


def points(
    session: Session, run_id: str, after_epoch: int = 0, limit: int | None = None, *, newest: bool = False
) -> list[dict[str, Any]]:
    """The run's points in epoch order, as plain rows (no ORM objects); `after_epoch` skips the ones a caller
    already has and `limit` caps how many come back, the first ones or with `newest` the last ones (all in SQL:
    a long curve can be read a page at a time)."""
    query = select(*_POINT_COLUMNS, CurvePoint.nonfinite).where(
        CurvePoint.run_id == run_id, CurvePoint.epoch > after_epoch
    )
    query = query.order_by(CurvePoint.epoch.desc() if newest else CurvePoint.epoch)
    if limit is not None:
        query = query.limit(limit)
    out = [_point(row) for row in session.execute(query)]
    return out[::-1] if newest else out


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
