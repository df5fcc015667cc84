"""A population in the database: create it, end its members' intervals, decide its rounds, read it back.

Members are runs. A member trains one interval (`interval` epochs) under its run's lease, writes its checkpoint
to the checkpoint store, then `reach` clears its lease and records the epoch it reached; the run stays
`running` (no lease, so the reconciler leaves it alone) until every member has reached the boundary. The call
that brings the last member there decides the round in the same transaction: scores, exploit, explore,
lineage, and every member run queued again (stamped as dispatched; the caller sends the messages right after
the commit, and a message lost then is sent again by the reconciler after LRLAB_REDISPATCH_SECONDS). The pbt
row is written first in each such transaction, so that two members ending together take turns (a row lock on
Postgres, the database write lock on SQLite) and exactly one of them decides the round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lrlab import leases, store
from lrlab import queue as broker
from lrlab.db import session_scope
from lrlab.experiments import fusable_spec
from lrlab.models import CurvePoint, Pbt, PbtEvent, PbtMember, Run, utcnow
from lrlab.pbt import search
from lrlab.pbt.checkpoints import CheckpointStore, member_key, pbt_prefix
from lrlab.schemas.pbt import (
    DiscoveredSchedule,
    FollowedEpoch,
    Hyperparameters,
    LineageEvent,
    PbtBest,
    PbtCreate,
    PbtMemberPublic,
    PbtPublic,
)
from lrlab.schemas.runs import RunStatus, RunSummary
from lrlab.schemas.spec import PiecewiseSchedule, RunSpec
from lrlab.settings import Settings, get_settings

log = logging.getLogger(__name__)

QUEUED, RUNNING = RunStatus.queued.value, RunStatus.running.value


class NotFusable(ValueError):
    """`execution: fused` asked for a model the fused engine does not stack."""


def mutations(request: PbtCreate) -> dict[str, search.Mutation]:
    return {name: search.mutation(space.model_dump()) for name, space in request.mutations.items()}


def choose_execution(request: PbtCreate) -> str:
    fusable = fusable_spec(request.base)
    if request.execution == "fused" and not fusable:
        raise NotFusable("fused execution needs a model the fused engine stacks (no dropout)")
    if request.execution == "auto":
        return "fused" if fusable else "distributed"
    return request.execution


def create(session: Session, request: PbtCreate, *, owner: str, queue: str) -> tuple[Pbt, list[Run]]:
    """The population and its member runs, queued, in the caller's transaction; NotFusable for a bad `fused`.

    The members are stamped as dispatched here, as every later round's are: the caller sends the first round
    (`dispatch`) after its commit, and a reconciler pass in between must not send them one by one (a fused
    round would split into separate runs).
    """
    pbt = Pbt(
        owner=owner,
        name=request.name,
        status=QUEUED,
        execution=choose_execution(request),
        spec=request.to_json(),
        queue=queue,
        boundary=0,
        created_at=utcnow(),
    )
    session.add(pbt)
    session.flush()
    runs: list[Run] = []
    now = utcnow()
    for k, values in enumerate(search.initial(mutations(request), request.population, request.seed)):
        run = store.create_run(
            session,
            request.member_spec(k, values),
            queue,
            label=f"{request.name} member {k}",
            params={"member": k, **values},
            owner=owner,
        )
        run.pbt_id, run.dispatched_at = pbt.id, now
        runs.append(run)
        session.add(
            PbtMember(
                pbt_id=pbt.id,
                member=k,
                run_id=run.id,
                epoch=0,
                weights_from=k,
                hyperparameters=values,
                history=[{"start": 1, "hyperparameters": values, "source": None}],
            )
        )
    session.flush()
    return pbt, runs


# --- rounds ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dispatch:
    """Messages to send once the transaction that queued these member runs has committed."""

    pbt_id: str
    execution: str
    queue: str
    run_ids: list[str]


def dispatch(next_round: Dispatch | None) -> None:
    """Send a round: one fused task for the population, or one task per member. Never raises."""
    if next_round is None or not next_round.run_ids:
        return
    if next_round.execution == "fused":
        try:
            broker.client().send_task(broker.TRAIN_PBT, args=[next_round.pbt_id], queue=next_round.queue)
            return
        except Exception as exc:  # the members go one by one, as the reconciler would send them
            log.warning("could not send population %s as one task: %s", next_round.pbt_id, exc)
    leases.dispatch_runs([(run_id, next_round.queue) for run_id in next_round.run_ids])


def _lock(session: Session, pbt_id: str) -> Pbt:
    """Write the pbt row first: the lock that orders every decision about this population."""
    session.execute(update(Pbt).where(Pbt.id == pbt_id).values(boundary=Pbt.boundary))
    pbt = session.get(Pbt, pbt_id, populate_existing=True)
    assert pbt is not None
    return pbt


def start(pbt_id: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Pbt).where(Pbt.id == pbt_id, Pbt.status == QUEUED).values(status=RUNNING, started_at=utcnow())
        )


def reach(run_id: str, token: str, epoch: int, outcome: dict[str, Any] | None) -> tuple[bool, Dispatch | None]:
    """Member run `run_id` trained and checkpointed through `epoch` under lease `token`.

    `outcome` (status, summary, n_parameters) ends the run when `epoch` is the last. Returns (recorded, the
    next round to send if this call decided one). Not recorded: the lease is not ours any more.
    """
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None or run.pbt_id is None:
            return False, None
        pbt = _lock(session, run.pbt_id)
        # attempts count the claims of one interval (the reconciler gives up on a run after MAX_ATTEMPTS)
        values: dict[str, Any] = {"lease_token": None, "lease_expires_at": None, "attempts": 0}
        if outcome is not None:
            values.update(finished_at=utcnow(), **outcome)
        moved = session.execute(
            update(Run).where(Run.id == run_id, Run.lease_token == token, Run.status == RUNNING).values(**values)
        ).rowcount  # type: ignore[attr-defined]
        if not moved:
            return False, None
        member = session.scalars(select(PbtMember).where(PbtMember.run_id == run_id)).one()
        member.epoch, member.weights_from = epoch, member.member
        session.flush()
        return True, _advance(session, pbt)


def end_member(run_id: str) -> None:
    """A member ended outside the rounds (failed, cancelled): the population ends with it."""
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is not None and run.pbt_id is not None:
            _advance(session, _lock(session, run.pbt_id))


def cancel(session: Session, pbt: Pbt) -> None:
    """Stop the population: queued members at once, training ones at their next epoch, waiting ones now."""
    _lock(session, pbt.id)
    if RunStatus(pbt.status).is_finished():
        return
    pbt.status, pbt.finished_at = RunStatus.cancelled.value, utcnow()
    _stop_members(session.scalars(select(Run).where(Run.pbt_id == pbt.id)))


def _stop_members(runs: Iterable[Run]) -> None:
    """Every unfinished member: cancelled now when nobody trains it (queued, or waiting between rounds), else
    asked to stop (its worker ends it after the current epoch)."""
    now = utcnow()
    for run in runs:
        if RunStatus(run.status).is_finished():
            continue
        if run.lease_token is None:
            run.status, run.finished_at = RunStatus.cancelled.value, now
        run.cancel_requested = True


def _advance(session: Session, pbt: Pbt) -> Dispatch | None:
    """Decide what follows now that a member moved: the population's end, a round, or nothing yet."""
    request = PbtCreate.model_validate(pbt.spec)
    members = list(session.scalars(select(PbtMember).where(PbtMember.pbt_id == pbt.id).order_by(PbtMember.member)))
    runs = {r.id: r for r in session.scalars(select(Run).where(Run.pbt_id == pbt.id))}
    ended = [
        runs[m.run_id] for m in members if runs[m.run_id].status in (RunStatus.failed.value, RunStatus.cancelled.value)
    ]
    if ended and not RunStatus(pbt.status).is_finished():
        failed = [r for r in ended if r.status == RunStatus.failed.value]
        pbt.status = RunStatus.failed.value if failed else RunStatus.cancelled.value
        pbt.finished_at = utcnow()
        pbt.error = f"member run {failed[0].id} failed: {failed[0].error}" if failed else None
        _stop_members(runs.values())
        return None
    if RunStatus(pbt.status).is_finished():
        return None
    target = min(pbt.boundary + request.interval, request.epochs)
    if any(m.epoch < target for m in members):
        return None
    if target >= request.epochs:
        pbt.status, pbt.finished_at, pbt.boundary = RunStatus.succeeded.value, utcnow(), target
        log.info("population %s finished after %d epochs", pbt.id, target)
        return None

    scores = _scores(session, [m.run_id for m in members], target, request.metric)
    replacements = search.exploit_and_explore(
        scores,
        [m.hyperparameters for m in members],
        mutations(request),
        quantile=request.quantile,
        mode=request.mode or "max",
        factors=request.perturbation_factors,
        resample_probability=request.resample_probability,
        seed=request.seed,
        epoch=target,
    )
    for r in replacements:
        m = members[r.target]
        m.hyperparameters, m.weights_from = r.new, r.source
        m.history = [*m.history, {"start": target + 1, "hyperparameters": r.new, "source": r.source}]
        session.add(
            PbtEvent(
                pbt_id=pbt.id,
                epoch=target,
                target=r.target,
                source=r.source,
                old=r.old,
                new=r.new,
                resampled=list(r.resampled),
                created_at=utcnow(),
            )
        )
    pbt.boundary = target
    now = utcnow()
    ids = [m.run_id for m in members]
    # stamped now, sent after the commit: a reconciler pass in between must not send them one by one
    session.execute(update(Run).where(Run.id.in_(ids)).values(status=QUEUED, dispatched_at=now))
    log.info("population %s: round after epoch %d, %d replaced", pbt.id, target, len(replacements))
    return Dispatch(pbt.id, pbt.execution, pbt.queue, ids)


def _scores(session: Session, run_ids: Sequence[str], epoch: int, metric: str) -> list[float | None]:
    rows = session.execute(
        select(CurvePoint.run_id, getattr(CurvePoint, metric)).where(
            CurvePoint.run_id.in_(run_ids), CurvePoint.epoch == epoch
        )
    ).all()
    found = {run_id: value for run_id, value in rows}
    return [found.get(run_id) for run_id in run_ids]


def prune_checkpoints(pbt_id: str, store: CheckpointStore, settings: Settings | None = None) -> None:
    """Once a population is finished, drop what it no longer needs from the store.

    Succeeded: every round's checkpoints but the members' last (all of them with LRLAB_PBT_CHECKPOINTS=all).
    Cancelled or failed: everything (nothing will resume). Running or queued: nothing.
    """
    settings = settings or get_settings()
    with session_scope() as session:
        pbt = session.get(Pbt, pbt_id)
        if pbt is None or not RunStatus(pbt.status).is_finished():
            return
        status = pbt.status
        request = PbtCreate.model_validate(pbt.spec)
    if status != RunStatus.succeeded.value:
        store.delete_prefix(pbt_prefix(pbt_id))
    elif settings.pbt_checkpoints == "final":
        for epoch in range(request.interval, request.epochs, request.interval):  # every boundary before the last
            for k in range(request.population):
                store.delete(member_key(pbt_id, k, epoch))


# --- reading -----------------------------------------------------------------------------------------


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
    request = PbtCreate.model_validate(pbt.spec)
    epoch = min((m.epoch for m, _ in rows), default=0)
    if epoch == 0:
        return None
    run_ids = [r.id for _, r in rows]
    scores = _scores(session, run_ids, epoch, request.metric)
    ranked = search.rank(scores, request.mode or "max")
    top = ranked[0]
    score = scores[top]
    if score is None or not math.isfinite(score):
        return None
    accuracy = _scores(session, [run_ids[top]], epoch, "val_accuracy")[0]
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
        spec=PbtCreate.model_validate(pbt.spec),
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
    request = PbtCreate.model_validate(pbt.spec)
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
