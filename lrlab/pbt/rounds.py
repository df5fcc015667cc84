"""A population's state machine in the database: create it, end its members' intervals, decide its rounds.

Members are runs. A member trains one interval (`interval` epochs) under its run's lease, writes its checkpoint
to the checkpoint store, then `reach` clears its lease and records the epoch it reached; the run stays
`running` (no lease, so the reconciler leaves it alone) until every member has reached the boundary. The call
that brings the last member there decides the round in the same transaction: scores, exploit, explore,
lineage, and every member run queued again, its messages stamped in that transaction (lrlab.outbox) and sent
by the caller right after the commit, as the first round's are by POST /v1/pbt. The pbt row is written first
in each such transaction, so that two members ending together take turns (a row lock on Postgres, the database
write lock on SQLite) and exactly one of them decides the round. What is read back (members, lineage, the best
member, the discovered schedule) is views.py's.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import CurvePoint, Pbt, PbtEvent, PbtMember, Run, utcnow
from lrlab.outbox import Message
from lrlab.pbt import search
from lrlab.pbt.checkpoints import CheckpointStore, member_key, pbt_prefix
from lrlab.runs import store
from lrlab.runs.fusing import population_execution
from lrlab.schemas.pbt import PbtCreate
from lrlab.schemas.runs import RunStatus
from lrlab.settings import Settings, get_settings

log = logging.getLogger(__name__)

QUEUED, RUNNING = RunStatus.queued.value, RunStatus.running.value

# Validated requests by population id. A population's spec never changes once it is created, so each process
# validates it once (at creation in the api), however many rounds are decided and pages read.
_requests: OrderedDict[str, PbtCreate] = OrderedDict()
_requests_lock = threading.Lock()
REQUESTS_KEPT = 512


def request_of(pbt: Pbt) -> PbtCreate:
    """The population's request, as it was validated when it was created."""
    with _requests_lock:
        found = _requests.get(pbt.id)
        if found is not None:
            _requests.move_to_end(pbt.id)
            return found
    return _remember(pbt.id, PbtCreate.model_validate(pbt.spec))


def _remember(pbt_id: str, request: PbtCreate) -> PbtCreate:
    with _requests_lock:
        _requests[pbt_id] = request
        while len(_requests) > REQUESTS_KEPT:
            _requests.popitem(last=False)
    return request


def mutations(request: PbtCreate) -> dict[str, search.Mutation]:
    return {name: search.mutation(space.model_dump()) for name, space in request.mutations.items()}


def create(session: Session, request: PbtCreate, *, owner: str, queue: str) -> tuple[Pbt, list[Run], list[Message]]:
    """The population and its member runs, queued, in the caller's transaction; NotFusable for a bad `fused`.

    Returns the first round's messages, stamped here as every later round's are: the caller sends them
    (outbox.send) after its commit.
    """
    pbt = Pbt(
        owner=owner,
        name=request.name,
        status=QUEUED,
        execution=population_execution(request.execution, request.base),
        spec=request.to_json(),
        queue=queue,
        boundary=0,
        created_at=utcnow(),
    )
    session.add(pbt)
    session.flush()
    _remember(pbt.id, request)
    runs: list[Run] = []
    for k, values in enumerate(search.initial(mutations(request), request.population, request.seed)):
        run = store.create_run(
            session,
            request.member_spec(k, values),
            queue,
            label=f"{request.name} member {k}",
            params={"member": k, **values},
            owner=owner,
        )
        run.pbt_id = pbt.id
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
    return pbt, runs, outbox.population_round(session, pbt.id, pbt.execution, queue, runs)


# --- rounds ------------------------------------------------------------------------------------------


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


def reach(run_id: str, token: str, epoch: int, outcome: dict[str, Any] | None) -> tuple[bool, list[Message]]:
    """Member run `run_id` trained and checkpointed through `epoch` under lease `token`.

    `outcome` (status, summary, n_parameters) ends the run when `epoch` is the last. Returns (recorded, the
    next round's messages if this call decided one: send them, outbox.send). Not recorded: the lease is not
    ours any more.
    """
    with session_scope() as session:
        run = session.get(Run, run_id)
        if run is None or run.pbt_id is None:
            return False, []
        pbt = _lock(session, run.pbt_id)
        # attempts count the claims of one interval (the reconciler gives up on a run after MAX_ATTEMPTS)
        values: dict[str, Any] = {"lease_token": None, "lease_expires_at": None, "attempts": 0}
        if outcome is not None:
            values.update(finished_at=utcnow(), **outcome)
        elif RunStatus(pbt.status).is_finished():  # it ended while this member trained: no round will come
            values.update(finished_at=utcnow(), status=RunStatus.cancelled.value)
        moved = session.execute(
            update(Run).where(Run.id == run_id, Run.lease_token == token, Run.status == RUNNING).values(**values)
        ).rowcount  # type: ignore[attr-defined]
        if not moved:
            return False, []
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


def _advance(session: Session, pbt: Pbt) -> list[Message]:
    """Decide what follows now that a member moved: the population's end, a round, or nothing yet."""
    if RunStatus(pbt.status).is_finished():
        return []
    request = request_of(pbt)
    members = list(session.scalars(select(PbtMember).where(PbtMember.pbt_id == pbt.id).order_by(PbtMember.member)))
    runs = {r.id: r for r in session.scalars(select(Run).where(Run.pbt_id == pbt.id))}
    if _end_with_a_member(pbt, [runs[m.run_id] for m in members]):
        return []
    target = min(pbt.boundary + request.interval, request.epochs)
    if any(m.epoch < target for m in members):
        return []
    if target >= request.epochs:
        pbt.status, pbt.finished_at, pbt.boundary = RunStatus.succeeded.value, utcnow(), target
        log.info("population %s finished after %d epochs", pbt.id, target)
        return []
    _exploit_and_explore(session, pbt, request, members, target)
    pbt.boundary = target
    ids = [m.run_id for m in members]
    session.execute(update(Run).where(Run.id.in_(ids)).values(status=QUEUED))
    return outbox.population_round(session, pbt.id, pbt.execution, pbt.queue, ids)


def _end_with_a_member(pbt: Pbt, runs: Sequence[Run]) -> bool:
    """A member that failed or was cancelled ends the population (failed if any failed) and stops the others."""
    ended = [r for r in runs if r.status in (RunStatus.failed.value, RunStatus.cancelled.value)]
    if not ended:
        return False
    failed = [r for r in ended if r.status == RunStatus.failed.value]
    pbt.status = RunStatus.failed.value if failed else RunStatus.cancelled.value
    pbt.finished_at = utcnow()
    pbt.error = f"member run {failed[0].id} failed: {failed[0].error}" if failed else None
    _stop_members(runs)
    return True


def _exploit_and_explore(
    session: Session, pbt: Pbt, request: PbtCreate, members: Sequence[PbtMember], target: int
) -> None:
    """The round at epoch `target`: the bottom members take a top member's weights and explore its values."""
    replacements = search.exploit_and_explore(
        scores(session, [m.run_id for m in members], target, request.metric),
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
    log.info("population %s: round after epoch %d, %d replaced", pbt.id, target, len(replacements))


def scores(session: Session, run_ids: Sequence[str], epoch: int, metric: str) -> list[float | None]:
    """Each run's `metric` at `epoch` (None where it has none), in the order of `run_ids`."""
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
        request = request_of(pbt)
    if status != RunStatus.succeeded.value:
        store.delete_prefix(pbt_prefix(pbt_id))
    elif settings.pbt_checkpoints == "final":
        for epoch in range(request.interval, request.epochs, request.interval):  # every boundary before the last
            for k in range(request.population):
                store.delete(member_key(pbt_id, k, epoch))
