"""Experiments: submit a grid (one run per cell), read and list them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from sqlalchemy import select

from api.deps import SessionDep
from api.errors import ApiError
from lrlab import experiments, queue, store
from lrlab.models import Experiment
from lrlab.schemas.experiments import ExperimentCreate, ExperimentCreated, ExperimentPublic, ExperimentsPublic

router = APIRouter(prefix="/v1/experiments", tags=["experiments"])


def load_experiment(session: SessionDep, experiment_id: Annotated[str, Path()]) -> Experiment:
    found = session.get(Experiment, experiment_id)
    if found is None:
        raise ApiError(404, ["path", "experiment_id"], f"no experiment {experiment_id}", "not_found")
    return found


ExperimentDep = Annotated[Experiment, Depends(load_experiment)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=ExperimentCreated)
def create_experiment(request: ExperimentCreate, session: SessionDep, response: Response) -> ExperimentCreated:
    """The cartesian product of `grid` becomes one run per cell (at most 256); all or nothing."""
    try:
        cells = experiments.expand(request)
    except experiments.CellError as exc:
        raise ApiError(422, ["body", "grid", "cell", exc.index], str(exc)) from exc
    experiment, runs = experiments.create_experiment(session, request, cells)
    session.commit()
    for run in runs:  # only after the commit: a worker must be able to read what it receives
        queue.enqueue_run(run.id, run.queue)
    response.headers["Location"] = f"/v1/experiments/{experiment.id}"
    return ExperimentCreated(id=experiment.id, runs=[r.id for r in runs])


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ExperimentsPublic:
    try:
        rows, next_cursor = store.page(session, select(Experiment), Experiment, limit=limit, cursor=cursor)
    except ValueError as exc:
        raise ApiError(422, ["query", "cursor"], str(exc)) from exc
    return ExperimentsPublic(data=[experiments.to_public(session, e) for e in rows], next_cursor=next_cursor)


@router.get("/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment: ExperimentDep, session: SessionDep) -> ExperimentPublic:
    return experiments.to_public(session, experiment)
