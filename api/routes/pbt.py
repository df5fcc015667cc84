"""Population based training: submit a population, read it (members, lineage, best), its schedule and chart."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import CursorDep, IdempotentDep, OwnerDep, PbtDep, QuotaDep, SessionDep
from api.errors import ApiError
from lrlab import broker, outbox
from lrlab.models import Pbt
from lrlab.pbt import rounds, views
from lrlab.pbt.checkpoints import get_checkpoint_store
from lrlab.reports.charts import CHART_METRICS, Series, render_pbt_chart
from lrlab.runs import store
from lrlab.runs.fusing import NotFusable
from lrlab.schemas.pbt import DiscoveredSchedule, PbtCreate, PbtCreated, PbtPublic, PbtsPublic

router = APIRouter(prefix="/v1/pbt", tags=["pbt"])

METRICS = tuple(m for m in CHART_METRICS if m != "lr")
MEDIA = {"svg": "image/svg+xml", "png": "image/png"}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PbtCreated,
    responses={
        404: {"description": "An uploaded dataset named by id is unknown, or another owner's"},
        409: {"description": "Idempotency-Key reused"},
        429: {"description": "Over quota"},
    },
)
def create_pbt(
    request: PbtCreate,
    session: SessionDep,
    owner: OwnerDep,
    idem: IdempotentDep,
    quota: QuotaDep,
    response: Response,
) -> PbtCreated | JSONResponse:
    """`population` members train `epochs`; every `interval` epochs the bottom `quantile` takes the weights and
    optimizer state of a top member and explores its hyperparameters (resampled or perturbed, within bounds)."""
    if (replayed := idem.replay(session)) is not None:
        return replayed
    specs = [request.member_spec(k, {}) for k in range(request.population)]
    quota.check_models([(request.base.dataset, request.base.model)], at=("body", "base"))
    quota.check_runs(specs, at=("body", "base"))
    broker.ensure_broker()
    try:
        pbt, runs, messages = rounds.create(
            session, request, owner=owner, queue=broker.choose_queue(session, request.base.device)
        )
    except NotFusable as exc:
        raise ApiError(422, ["body", "execution"], str(exc)) from exc
    created = PbtCreated(id=pbt.id, runs=[r.id for r in runs])
    location = f"/v1/pbt/{pbt.id}"
    if (replayed := idem.commit(session, 202, created.model_dump(mode="json"), location)) is not None:
        return replayed
    outbox.send(messages)
    response.headers["Location"] = location
    return created


@router.get("", response_model=PbtsPublic)
def list_pbts(
    session: SessionDep,
    owner: OwnerDep,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> PbtsPublic:
    """Newest first. Members come without their points: GET one population for its curves."""
    rows, next_cursor = store.page(session, select(Pbt).where(Pbt.owner == owner), Pbt, limit=limit, cursor=cursor)
    return PbtsPublic(data=[views.to_public(session, p, curves=False) for p in rows], next_cursor=next_cursor)


@router.get("/{pbt_id}", response_model=PbtPublic)
def get_pbt(pbt: PbtDep, session: SessionDep) -> PbtPublic:
    return views.to_public(session, pbt)


@router.post("/{pbt_id}/cancel", response_model=PbtPublic, status_code=status.HTTP_202_ACCEPTED)
def cancel_pbt(pbt: PbtDep, session: SessionDep) -> PbtPublic:
    """Queued and waiting members stop now, training ones after their current epoch."""
    rounds.cancel(session, pbt)
    session.commit()
    rounds.prune_checkpoints(pbt.id, get_checkpoint_store())  # members still training prune again as they stop
    return views.to_public(session, pbt)


@router.get(
    "/{pbt_id}/schedule",
    response_model=DiscoveredSchedule,
    responses={409: {"description": "The members have not all finished their first interval"}},
)
def get_schedule(pbt: PbtDep, session: SessionDep) -> DiscoveredSchedule:
    """The best member's lr schedule (inherited history included) as a piecewise schedule, and a run spec that
    replays it from scratch: POST its `run` to /v1/runs."""
    found = views.discovered_schedule(session, pbt)
    if found is None:
        raise ApiError(
            409,
            ["path", "pbt_id"],
            "no schedule yet: the members have not all finished their first interval",
            "not_ready",
        )
    return found


@router.get(
    "/{pbt_id}/charts/{chart}",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The chart."}},
)
def pbt_chart(
    pbt: PbtDep,
    session: SessionDep,
    chart: Annotated[
        str, Path(pattern=rf"^({'|'.join(METRICS)})\.(svg|png)$", description="`<metric>.svg` or `<metric>.png`.")
    ],
) -> Response:
    """Every member's `metric` per epoch (exploits marked) over the best member's discovered lr schedule."""
    metric, fmt = chart.rsplit(".", 1)
    public = views.to_public(session, pbt)
    series = [
        Series(label=f"member {m.member}", status=m.status.value, points=[p.model_dump() for p in m.points])
        for m in public.members
    ]
    lr = pbt.spec["base"]["optimizer"]["lr"]
    schedule = [(e.epoch, float(e.values.get("lr", lr))) for e in public.best.schedule] if public.best else []
    exploits = [(e.epoch, e.target) for e in public.lineage]
    body = render_pbt_chart(series, metric, schedule, exploits, fmt=fmt, title=pbt.name)  # type: ignore[arg-type]
    return Response(body, media_type=MEDIA[fmt])
