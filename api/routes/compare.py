"""Comparisons and charts: of an experiment's runs, or of any runs named in ?runs=."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import ExperimentDep, OwnerDep, SessionDep
from api.errors import ApiError
from lrlab.models import Run
from lrlab.reports import compare
from lrlab.reports.charts import CHART_METRICS
from lrlab.runs import experiments
from lrlab.schemas.compare import Comparison, Metric

router = APIRouter(tags=["compare"])

MAX_COMPARE_RUNS = 256
CHART_PATTERN = rf"^({'|'.join(CHART_METRICS)})\.(svg|png)$"
MEDIA = {"svg": "image/svg+xml", "png": "image/png"}

MetricQuery = Annotated[Metric, Query(description="Ranking metric; its direction (max/min) is implied.")]
TargetQuery = Annotated[float | None, Query(ge=0, le=1, description="Accuracy for `epochs_to_target`.")]
MaxPointsQuery = Annotated[
    int | None, Query(ge=2, le=100_000, description="Downsample each curve to at most this many points.")
]
RunsQuery = Annotated[str, Query(min_length=1, max_length=40_000, description="Comma-separated run ids.")]
ChartPath = Annotated[str, Path(pattern=CHART_PATTERN, description="`<metric>.svg` or `<metric>.png`.")]
LogQuery = Annotated[bool, Query(description="Logarithmic y axis (losses, lr).")]


def _named_runs(session: SessionDep, owner: str, runs: str) -> list[Run]:
    ids = [r.strip() for r in runs.split(",") if r.strip()]
    if not ids or len(ids) > MAX_COMPARE_RUNS:
        raise ApiError(422, ["query", "runs"], f"give between 1 and {MAX_COMPARE_RUNS} run ids")
    found = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids), Run.owner == owner))}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ApiError(404, ["query", "runs"], f"no run {missing[0]}", "not_found")
    return [found[i] for i in dict.fromkeys(ids)]


def _chart(session: SessionDep, runs: list[Run], chart: str, log: bool, title: str) -> Response:
    metric, fmt = chart.rsplit(".", 1)
    try:
        body = compare.chart(session, runs, metric, fmt=fmt, log_scale=log, title=title)
    except ValueError as exc:
        raise ApiError(422, ["query", "log"], str(exc)) from exc
    return Response(body, media_type=MEDIA[fmt])


CHART_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The chart."}
}
RUNS_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"description": "A run in ?runs= is unknown, or another owner's"}
}


def _comparison(
    session: SessionDep, runs: list[Run], metric: str, target: float | None, max_points: int | None
) -> StreamingResponse:
    # Written as it is computed, a run at a time (lrlab.reports.compare), not built as one model and serialised.
    chunks = compare.compare(session, runs, metric=metric, target=target, max_points=max_points)
    return StreamingResponse(chunks, media_type="application/json")


@router.get("/v1/experiments/{experiment_id}/compare", response_model=Comparison)
def compare_experiment(
    experiment: ExperimentDep,
    session: SessionDep,
    metric: MetricQuery = "best_val_accuracy",
    target: TargetQuery = None,
    max_points: MaxPointsQuery = None,
) -> StreamingResponse:
    """The experiment's runs ranked by `metric`, with summaries and curves; seeds aggregated into groups."""
    return _comparison(session, experiments.members(session, experiment.id), metric, target, max_points)


@router.get("/v1/compare", response_model=Comparison, responses=RUNS_RESPONSES)
def compare_runs(
    session: SessionDep,
    owner: OwnerDep,
    runs: RunsQuery,
    metric: MetricQuery = "best_val_accuracy",
    target: TargetQuery = None,
    max_points: MaxPointsQuery = None,
) -> StreamingResponse:
    """Any runs, from any experiments, side by side."""
    return _comparison(session, _named_runs(session, owner, runs), metric, target, max_points)


@router.get("/v1/experiments/{experiment_id}/charts/{chart}", response_class=Response, responses=CHART_RESPONSES)
def experiment_chart(
    experiment: ExperimentDep, session: SessionDep, chart: ChartPath, log: LogQuery = False
) -> Response:
    """One line per run: val_accuracy, val_loss, train_accuracy, train_loss or lr per epoch."""
    return _chart(session, experiments.members(session, experiment.id), chart, log, experiment.name)


@router.get("/v1/compare/charts/{chart}", response_class=Response, responses={**CHART_RESPONSES, **RUNS_RESPONSES})
def compare_chart(
    session: SessionDep, owner: OwnerDep, chart: ChartPath, runs: RunsQuery, log: LogQuery = False
) -> Response:
    return _chart(session, _named_runs(session, owner, runs), chart, log, "comparison")
