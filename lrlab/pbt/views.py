"""What a population looks like from outside: its members and their curves, lineage, best member, and the
lr schedule that member's weights were trained with (read models; the state machine is rounds.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab.models import Pbt, PbtEvent, PbtMember, Run
from lrlab.pbt import search
from lrlab.pbt.rounds import request_of, scores
from lrlab.runs import store
from lrlab.schemas.pbt import (
    DiscoveredSchedule,
    FollowedEpoch,
    Hyperparameters,
    LineageEvent,
    PbtBest,
    PbtMemberPublic,
    PbtPublic,
)
from lrlab.schemas.runs import RunStatus, RunSummary
from lrlab.schemas.spec import PiecewiseSchedule, RunSpec


def members(session: Session, pbt_id: str) -> list[tuple[PbtMember, Run]]:
    rows = session.execute(
        select(PbtMember, Run)
        .join(Run, Run.id == PbtMember.run_id)
        .where(PbtMember.pbt_id == pbt_id)
        .order_by(PbtMember.member)
    ).all()
    return [(m, r) for m, r in rows]


def histories(rows: Sequence[tuple[PbtMember, Run]]) -> list[list[search.Segment]]:
    return [[search.Segment(s["start"], s["hyperparameters"], s["source"]) for s in m.history] for m, _ in rows]


def best(session: Session, pbt: Pbt, rows: Sequence[tuple[PbtMember, Run]]) -> PbtBest | None:
    """The best member at the last epoch every member reached, and what its weights were trained with."""
    request = request_of(pbt)
    epoch = min((m.epoch for m, _ in rows), default=0)
    if epoch == 0:
        return None
    run_ids = [r.id for _, r in rows]
    found = scores(session, run_ids, epoch, request.metric)
    top = search.rank(found, request.mode or "max")[0]
    score = found[top]
    if score is None or not math.isfinite(score):
        return None
    accuracy = scores(session, [run_ids[top]], epoch, "val_accuracy")[0]
    followed = search.followed(histories(rows), top, epoch)
    return PbtBest(
        member=top,
        run_id=run_ids[top],
        epoch=epoch,
        score=score,
        val_accuracy=accuracy,
        schedule=[FollowedEpoch(epoch=e, member=who, values=v) for e, (who, v) in enumerate(followed, start=1)],
    )


def to_public(session: Session, pbt: Pbt, *, curves: bool = True) -> PbtPublic:
    """The population; without `curves` its members come without points (a list of many stays light)."""
    rows = members(session, pbt.id)
    events = session.scalars(
        select(PbtEvent).where(PbtEvent.pbt_id == pbt.id).order_by(PbtEvent.epoch, PbtEvent.target)
    )
    all_histories = histories(rows)
    public = []
    for (m, run), history in zip(rows, all_histories, strict=True):
        points = store.points(session, run.id) if curves else []
        by_epoch = search.in_force(history, len(points))
        public.append(
            PbtMemberPublic(
                member=m.member,
                run_id=run.id,
                status=RunStatus(run.status),
                seed=int(run.spec["seed"]),
                hyperparameters=m.hyperparameters,
                points=points,  # type: ignore[arg-type]
                hyperparameters_by_epoch=[
                    Hyperparameters(epoch=p["epoch"], values=by_epoch[p["epoch"] - 1]) for p in points
                ],
                summary=RunSummary.model_validate(run.summary) if run.summary else None,
            )
        )
    return PbtPublic(
        id=pbt.id,
        name=pbt.name,
        status=RunStatus(pbt.status),
        execution=pbt.execution,
        spec=request_of(pbt),
        epochs_completed=pbt.boundary,
        created_at=pbt.created_at,
        started_at=pbt.started_at,
        finished_at=pbt.finished_at,
        error=pbt.error,
        members=public,
        lineage=[
            LineageEvent(epoch=e.epoch, target=e.target, source=e.source, old=e.old, new=e.new, resampled=e.resampled)
            for e in events
        ],
        best=best(session, pbt, rows),
    )


def discovered_schedule(session: Session, pbt: Pbt) -> DiscoveredSchedule | None:
    """The best member's lr, epoch by epoch, as a piecewise schedule and a run spec replaying it from scratch."""
    request = request_of(pbt)
    found = best(session, pbt, members(session, pbt.id))
    if found is None:
        return None
    values = [e.values for e in found.schedule]
    base_lr = request.base.optimizer.lr
    lrs = [float(v.get("lr", base_lr)) for v in values]
    boundaries = [e for e in range(1, len(lrs)) if lrs[e] != lrs[e - 1]]
    piecewise = PiecewiseSchedule(
        kind="piecewise", boundaries=boundaries, values=[lrs[0]] + [lrs[b] for b in boundaries]
    )
    spec = request.base.to_json()
    spec["optimizer"].update({k: v for k, v in values[0].items() if k != "lr"})
    spec["optimizer"]["lr"] = lrs[0]
    # the seed of the member whose initial weights the best ones descend from (its first epoch's), not the
    # best member's own: the replay then starts from the same weights and data order as that lineage did,
    # and on the population's split (its own seed would split the data differently)
    root = request.member_spec(found.schedule[0].member, {})
    spec.update(epochs=len(lrs), seed=root.seed, split_seed=root.data_seed, schedule=piecewise.model_dump(mode="json"))
    others = {
        name: [v.get(name) for v in values]
        for name in request.mutations
        if name != "lr" and len({repr(v.get(name)) for v in values}) > 1
    }
    return DiscoveredSchedule(
        pbt_id=pbt.id, member=found.member, schedule=piecewise, run=RunSpec.model_validate(spec), not_replayed=others
    )
