"""Advice: which optimizer and learning rate, in one request; read it stage by stage, list it, cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import AdviceDep, CursorDep, IdempotentDep, OwnerDep, QuotaDep, SessionDep
from api.errors import ApiError
from lrlab import broker, outbox
from lrlab.advice import pipeline, plan, views
from lrlab.models import Advice
from lrlab.runs import store
from lrlab.schemas.advice import AdviceCreate, AdviceCreated, AdvicePublic, AdvicesPublic, AdviceStage, AdviceStatus
from lrlab.schemas.spec import RunSpec

router = APIRouter(prefix="/v1/advice", tags=["advice"])


def planned_runs(request: AdviceCreate) -> list[RunSpec]:
    """Every run the advice may train, at full budget: what its quota counts when it is asked for."""
    search = len(request.optimizers) * len(plan.LR_FACTORS)
    replicates = (min(plan.FINALISTS, search) + len(request.schedules) - 1) * request.seeds
    return [request.base] * (search + replicates)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AdviceCreated,
    responses={
        404: {"description": "An uploaded dataset named by id is unknown, or another owner's"},
        409: {"description": "Idempotency-Key reused"},
        429: {"description": "Over quota"},
    },
)
def create_advice(
    request: AdviceCreate,
    session: SessionDep,
    owner: OwnerDep,
    idem: IdempotentDep,
    quota: QuotaDep,
    response: Response,
) -> AdviceCreated | JSONResponse:
    """An lr range test per optimizer; a search over each optimizer at lrs spanning 100x around its suggestion,
    pruned by successive halving; the best configurations over `seeds` seeds at full budget (and the other
    `schedules` on the best); a verdict between the winner and the runner-up. The quota counts every run it may
    train (all at once, as if they were asked for now) and its range tests."""
    if (replayed := idem.replay(session)) is not None:
        return replayed
    quota.check_models([(request.base.dataset, request.base.model)], at=("body", "base"))
    quota.check_runs(planned_runs(request), at=("body", "base"), jobs=len(request.optimizers))
    broker.ensure_broker()
    advice, jobs, messages = pipeline.create(session, request, owner=owner)
    created = AdviceCreated(
        id=advice.id, status=AdviceStatus.queued, stage=AdviceStage.range_tests, lr_finders=[j.id for j in jobs]
    )
    location = f"/v1/advice/{advice.id}"
    if (replayed := idem.commit(session, 202, created.model_dump(mode="json"), location)) is not None:
        return replayed
    outbox.send(messages)
    response.headers["Location"] = location
    return created


@router.get("", response_model=AdvicesPublic)
def list_advice(
    session: SessionDep,
    owner: OwnerDep,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> AdvicesPublic:
    """Newest first."""
    rows, next_cursor = store.page(
        session, select(Advice).where(Advice.owner == owner), Advice, limit=limit, cursor=cursor
    )
    return AdvicesPublic(data=[views.to_public(session, a) for a in rows], next_cursor=next_cursor)


@router.get("/{advice_id}", response_model=AdvicePublic)
def get_advice(advice: AdviceDep, session: SessionDep) -> AdvicePublic:
    """Where it stands: each stage's objects (range tests, the search experiment, the replicates), and once it
    has succeeded the recommendation, the runner-up, the verdict between them and the compute it spent."""
    return views.to_public(session, advice)


@router.post(
    "/{advice_id}/cancel",
    response_model=AdvicePublic,
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The advice is already finished"}},
)
def cancel_advice(advice: AdviceDep, session: SessionDep) -> AdvicePublic:
    """Every stage stops: queued range tests and runs at once, training ones within a step or an epoch."""
    if not pipeline.cancel(session, advice):
        raise ApiError(409, ["path", "advice_id"], f"advice is already {advice.status}", "conflict")
    session.commit()
    return views.to_public(session, advice)
