"""Experiments: submit a grid (one run per cell), read and list them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import CursorDep, ExperimentDep, IdempotentDep, OwnerDep, QuotaDep, SessionDep
from api.errors import ApiError
from lrlab import broker, outbox
from lrlab.models import Experiment
from lrlab.runs import experiments, store
from lrlab.schemas.experiments import ExperimentCreate, ExperimentCreated, ExperimentPublic, ExperimentsPublic

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExperimentCreated,
    responses={
        404: {"description": "An uploaded dataset named by id is unknown, or another owner's"},
        409: {"description": "Idempotency-Key reused"},
        429: {"description": "Over quota"},
    },
)
def create_experiment(
    request: ExperimentCreate,
    session: SessionDep,
    owner: OwnerDep,
    idem: IdempotentDep,
    quota: QuotaDep,
    response: Response,
) -> ExperimentCreated | JSONResponse:
    """The cartesian product of `grid` becomes one run per cell (at most 256); all or nothing."""
    if (replayed := idem.replay(session)) is not None:
        return replayed
    try:
        cells = experiments.expand(request)
    except experiments.CellError as exc:
        raise ApiError(422, ["body", "grid", "cell", exc.index], str(exc)) from exc
    axes = [axis for axis in request.grid.axes() if "." in axis]
    quota.check_models([(c.spec.dataset, c.spec.model) for c in cells], at=("body", "base"), axes=axes)
    quota.check_runs([c.spec for c in cells], at=("body", "base"))
    broker.ensure_broker()
    experiment, runs = experiments.create_experiment(session, request, cells, owner=owner)
    messages = outbox.experiment(session, experiment.execution, runs)
    created = ExperimentCreated(id=experiment.id, runs=[r.id for r in runs])
    location = f"/v1/experiments/{experiment.id}"
    if (replayed := idem.commit(session, 202, created.model_dump(mode="json"), location)) is not None:
        return replayed
    outbox.send(messages)
    response.headers["Location"] = location
    return created


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    session: SessionDep,
    owner: OwnerDep,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ExperimentsPublic:
    rows, next_cursor = store.page(
        session, select(Experiment).where(Experiment.owner == owner), Experiment, limit=limit, cursor=cursor
    )
    return ExperimentsPublic(data=[experiments.to_public(session, e) for e in rows], next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment: ExperimentDep, session: SessionDep) -> ExperimentPublic:
    return experiments.to_public(session, experiment)
