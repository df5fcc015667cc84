"""Learning-rate range tests: submit one, read its points and suggestion, list them, chart them, cancel one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import CursorDep, IdempotentDep, LrFinderDep, OwnerDep, QuotaDep, SessionDep
from api.errors import ApiError
from lrlab import broker, outbox
from lrlab.models import LrFinder
from lrlab.reports.charts import render_lr_finder_chart
from lrlab.runs import store, sweeps
from lrlab.schemas.experiments import LrFinderCreate, LrFinderPublic, LrFindersPublic
from lrlab.schemas.runs import RunStatus

router = APIRouter(prefix="/v1/lr-finder", tags=["lr-finder"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=LrFinderPublic,
    responses={
        404: {"description": "An uploaded dataset named by id is unknown, or another owner's"},
        409: {"description": "Idempotency-Key reused"},
        429: {"description": "Over quota"},
    },
)
def create_lr_finder(
    request: LrFinderCreate,
    session: SessionDep,
    owner: OwnerDep,
    idem: IdempotentDep,
    quota: QuotaDep,
    response: Response,
) -> LrFinderPublic | JSONResponse:
    """Sweep lr exponentially over `steps` training steps; the answer carries `suggested_lr` and `suggested_grid`.
    A queued or running job counts as one run against LRLAB_MAX_ACTIVE_RUNS_PER_KEY."""
    if (replayed := idem.replay(session)) is not None:
        return replayed
    quota.check_models([(request.dataset, request.model)])
    quota.check_job(request.dataset)
    broker.ensure_broker()
    job = sweeps.create_job(session, request, owner=owner)
    messages = outbox.lr_finders(session, [job])
    location = f"/v1/lr-finder/{job.id}"
    public = sweeps.to_public(job)
    if (replayed := idem.commit(session, 202, public.model_dump(mode="json"), location)) is not None:
        return replayed
    outbox.send(messages)
    response.headers["Location"] = location
    return public


@router.get("", response_model=LrFindersPublic)
def list_lr_finders(
    session: SessionDep,
    owner: OwnerDep,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> LrFindersPublic:
    rows, next_cursor = store.page(
        session, select(LrFinder).where(LrFinder.owner == owner), LrFinder, limit=limit, cursor=cursor
    )
    return LrFindersPublic(data=[sweeps.to_public(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=LrFinderPublic)
def get_lr_finder(job: LrFinderDep) -> LrFinderPublic:
    return sweeps.to_public(job)


@router.post(
    "/{job_id}/cancel",
    response_model=LrFinderPublic,
    responses={409: {"description": "The job is already finished"}},
)
def cancel_lr_finder(job: LrFinderDep, session: SessionDep) -> LrFinderPublic:
    """A queued job is cancelled at once; a running one stops within a few steps and keeps the points it has."""
    if RunStatus(job.status).is_finished():
        raise ApiError(409, ["path", "job_id"], f"lr-finder job is already {job.status}", "conflict")
    sweeps.request_cancel(session, job)
    session.commit()
    session.refresh(job)
    return sweeps.to_public(job)


@router.get(
    "/{job_id}/{chart}",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The sweep."}},
)
def lr_finder_chart(job: LrFinderDep, chart: Annotated[str, Path(pattern=r"^chart\.(svg|png)$")]) -> Response:
    """Loss and smoothed loss against lr (log axis), with the suggestion marked."""
    fmt: Literal["svg", "png"] = "svg" if chart.endswith(".svg") else "png"
    public = sweeps.to_public(job)
    body = render_lr_finder_chart(
        [p.model_dump() for p in public.points],
        public.suggested_lr,
        fmt=fmt,
        title="lr range test",  # type: ignore[arg-type]
    )
    return Response(body, media_type="image/svg+xml" if fmt == "svg" else "image/png")
