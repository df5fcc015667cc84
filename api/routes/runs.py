"""Runs: submit, read, list, curves (JSON or CSV), cancel."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse

from api.deps import CursorDep, IdempotentDep, OwnerDep, QuotaDep, RunDep, SessionDep
from api.errors import ApiError
from lrlab import broker, outbox
from lrlab.models import Pbt
from lrlab.pbt import rounds
from lrlab.pbt.checkpoints import get_checkpoint_store
from lrlab.reports import columnar, curves, encode
from lrlab.runs import store
from lrlab.schemas import Curves, RunCreated, RunPublic, RunSpec, RunsPublic, RunStatus

router = APIRouter(prefix="/v1/runs", tags=["runs"])

CSV_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunCreated,
    responses={
        404: {"description": "An uploaded dataset named by id is unknown, or another owner's"},
        409: {"description": "Idempotency-Key reused"},
        429: {"description": "Over quota"},
    },
)
def create_run(
    spec: RunSpec, session: SessionDep, owner: OwnerDep, idem: IdempotentDep, quota: QuotaDep, response: Response
) -> RunCreated | JSONResponse:
    """Queue one training run; poll `Location` (or its /curves) for progress."""
    if (replayed := idem.replay(session)) is not None:
        return replayed
    quota.check_models([(spec.dataset, spec.model)])
    quota.check_runs([spec])
    broker.ensure_broker()
    run = store.create_run(session, spec, broker.choose_queue(session, spec.device), owner=owner)
    messages = outbox.runs(session, [run])
    created = RunCreated(id=run.id, status=RunStatus.queued)
    location = f"/v1/runs/{run.id}"
    if (replayed := idem.commit(session, 202, created.model_dump(mode="json"), location)) is not None:
        return replayed
    outbox.send(messages)  # after the commit: a worker never receives an id it cannot read yet
    response.headers["Location"] = location
    return created


@router.get("", response_model=RunsPublic)
def list_runs(
    session: SessionDep,
    owner: OwnerDep,
    status: RunStatus | None = None,
    dataset: Annotated[str | None, Query(max_length=520, description="Dataset name, or file:<path>.")] = None,
    optimizer: Annotated[str | None, Query(max_length=16)] = None,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RunsPublic:
    """Newest first; pass `next_cursor` back as `cursor` for the next page."""
    rows, next_cursor = store.list_runs(
        session, owner=owner, limit=limit, status=status, dataset=dataset, optimizer=optimizer, cursor=cursor
    )
    return RunsPublic(data=[store.to_public(r) for r in rows], next_cursor=next_cursor)


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run: RunDep) -> RunPublic:
    return store.to_public(run)


@router.get(
    "/{run_id}/curves",
    response_model=Curves,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with ?format=csv"}},
)
def get_curves(
    run: RunDep,
    session: SessionDep,
    format: Literal["json", "csv"] = "json",
    max_points: Annotated[
        int | None, Query(ge=2, le=100_000, description="Downsample to at most this many points (says so).")
    ] = None,
) -> Response:
    """Per-epoch train/val loss and accuracy and the lr in force; epochs count from 1; whole unless max_points."""
    # Read as columns and written as JSON from them (lrlab.reports): a 10,000-epoch curve in tens of milliseconds.
    curve = curves.fetch(session, [run.id]).get(run.id) or curves.empty_curve()
    rows, info = columnar.downsample_rows(curve, max_points) if max_points else (None, None)
    if format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(curve.points(None if rows is None else rows.tolist()))
        return PlainTextResponse(out.getvalue(), media_type="text/csv")
    n = len(curve) if rows is None else len(rows)
    sampling = info.model_dump() if info else {"n_raw": n, "n_returned": n}
    head = Curves(run_id=run.id, points=[], **sampling).model_dump(mode="json")
    del head["points"]
    return Response(encode.with_array(head, "points", encode.points(curve, rows)), media_type="application/json")


@router.post(
    "/{run_id}/cancel", response_model=RunPublic, responses={409: {"description": "The run is already finished"}}
)
def cancel_run(run: RunDep, session: SessionDep) -> RunPublic:
    """A queued run is cancelled at once; a running one stops at the end of its current epoch. A member of a
    population based training cannot go on alone: the whole population is cancelled (POST /v1/pbt/{id}/cancel)."""
    if RunStatus(run.status).is_finished():
        raise ApiError(409, ["path", "run_id"], f"run is already {run.status}", "conflict")
    pbt = session.get(Pbt, run.pbt_id) if run.pbt_id is not None else None
    if pbt is not None:
        rounds.cancel(session, pbt)
    else:
        store.request_cancel(session, run)
    session.commit()
    if pbt is not None:
        rounds.prune_checkpoints(pbt.id, get_checkpoint_store())
    session.refresh(run)
    return store.to_public(run)
