"""Searches: an Optuna study asked for trials batch by batch, each trial a run (lrlab.search.driver)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import CursorDep, IdempotentDep, OwnerDep, QuotaDep, SessionDep, _owned
from lrlab import broker, outbox
from lrlab.models import Search
from lrlab.runs import store
from lrlab.schemas.search import SearchCreate, SearchCreated, SearchesPublic, SearchPublic
from lrlab.search import driver

router = APIRouter(prefix="/v1/searches", tags=["searches"])

# load-or-404, scoped to the caller, as api/deps.py's other resources
SearchDep = Annotated[Search, Depends(_owned(Search, "search_id", "search"))]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SearchCreated,
    responses={
        404: {"description": "An uploaded dataset named by id is unknown, or another owner's"},
        409: {"description": "Idempotency-Key reused"},
        429: {"description": "Over quota"},
    },
)
def create_search(
    request: SearchCreate,
    session: SessionDep,
    owner: OwnerDep,
    idem: IdempotentDep,
    quota: QuotaDep,
    response: Response,
) -> SearchCreated | JSONResponse:
    """`trials` configurations of `base` from Optuna's sampler, `parallel` at a time (one fused pack where the
    runs can be stacked), each a run; `early_stopping` stops a batch's losers at each rung."""
    if (replayed := idem.replay(session)) is not None:
        return replayed
    variants = request.model_variants()
    keys = request.plugin_keys()
    quota.check_models(
        [(v.dataset, v.model) for v in variants], at=("body", "base"), axes=keys, axes_at=("body", "space")
    )
    quota.check_runs([request.base] * request.parallel, at=("body", "base"))  # a batch is active at once
    broker.ensure_broker()
    search, messages = driver.create(session, request, owner=owner)
    created = SearchCreated(id=search.id, study_name=search.study_name)
    location = f"/v1/searches/{search.id}"
    if (replayed := idem.commit(session, 202, created.model_dump(mode="json"), location)) is not None:
        return replayed
    outbox.send(messages)
    response.headers["Location"] = location
    return created


@router.get("", response_model=SearchesPublic)
def list_searches(
    session: SessionDep,
    owner: OwnerDep,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> SearchesPublic:
    """Newest first, without their trials (GET one for those)."""
    rows, next_cursor = store.page(
        session, select(Search).where(Search.owner == owner), Search, limit=limit, cursor=cursor
    )
    return SearchesPublic(data=[driver.to_public(session, s, detail=False) for s in rows], next_cursor=next_cursor)


@router.get("/{search_id}", response_model=SearchPublic)
def get_search(search: SearchDep, session: SessionDep) -> SearchPublic:
    """Its trials (each a run), the best so far, and Optuna's parameter importances."""
    return driver.to_public(session, search)


@router.post("/{search_id}/cancel", response_model=SearchPublic, status_code=status.HTTP_202_ACCEPTED)
def cancel_search(search: SearchDep, session: SessionDep) -> SearchPublic:
    """No more trials; queued trial runs are cancelled now, training ones after their current epoch."""
    driver.cancel(session, search)
    session.commit()
    return driver.to_public(session, search)
