"""An advice's state machine in the database: create it, advance it as each stage's last object ends, cancel it.

Stages are lrlab objects: the range tests are lr-finder jobs, the search and the replicates are experiments
(their runs train as any experiment's do). A worker that records the outcome of one of them calls
`after_job` / `after_run`; the call that finds the stage's last object finished decides what follows, in one
transaction: the next stage's rows, queued, their messages stamped there (lrlab.outbox) and sent by the caller
after the commit. The advice row is written first in each such transaction (`_lock`), so that two objects
ending together take turns (a row lock on Postgres, the database write lock on SQLite) and exactly one of them
moves the advice on; the other finds the stage it came for already left. A worker that dies between an outcome
and its call, and an object ended by the api or the reconciler (a cancel, a job that lost its worker too often),
leave a stage finished with nobody to move it on: every reconciler pass calls `reconcile`, which advances those.
What the method decides at each step is plan.py's; what is read back is views.py's.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Celery
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from lrlab import outbox
from lrlab.advice import plan
from lrlab.db import session_scope
from lrlab.models import Advice, Experiment, LrFinder, Run, utcnow
from lrlab.outbox import Message
from lrlab.reports import analysis
from lrlab.runs import experiments, store, sweeps
from lrlab.schemas.advice import AdviceCreate, AdviceStage, AdviceStatus, settings_key
from lrlab.schemas.experiments import ExperimentCreate, LrFinderCreate
from lrlab.schemas.spec import RunSpec

log = logging.getLogger(__name__)

ACTIVE = (AdviceStatus.queued.value, AdviceStatus.running.value)  # runs and jobs share these two
BATCH = 200  # active advice one reconciler pass looks at


def request_of(advice: Advice) -> AdviceCreate:
    return AdviceCreate.model_validate(advice.spec)


def range_test_request(request: AdviceCreate, optimizer: Any) -> LrFinderCreate:
    base = request.base
    return LrFinderCreate.model_validate(
        {
            "dataset": base.dataset.model_dump(mode="json"),
            "model": base.model.model_dump(mode="json"),
            "optimizer": optimizer.model_dump(mode="json"),
            "batch_size": base.batch_size,
            "seed": base.seed,
            "device": base.device,
            **plan.RANGE_TEST,
        }
    )


def create(session: Session, request: AdviceCreate, *, owner: str) -> tuple[Advice, list[LrFinder], list[Message]]:
    """The advice and its first stage (a range test per optimizer), queued in the caller's transaction; the
    caller sends the messages (outbox.send) after its commit."""
    advice = Advice(
        owner=owner,
        name=request.name,
        status=AdviceStatus.queued.value,
        stage=AdviceStage.range_tests.value,
        spec=request.to_json(),
        plan={},
        created_at=utcnow(),
    )
    session.add(advice)
    session.flush()
    jobs, tests = [], []
    for optimizer in request.optimizers:
        job = sweeps.create_job(session, range_test_request(request, optimizer), owner=owner)
        job.advice_id = advice.id
        jobs.append(job)
        tests.append({"optimizer": plan.optimizer_label(optimizer), "key": settings_key(optimizer), "job_id": job.id})
    advice.plan = {"range_tests": tests}
    session.flush()
    return advice, jobs, outbox.lr_finders(session, jobs)


# --- moving on --------------------------------------------------------------------------------------


def _lock(session: Session, advice_id: str) -> Advice | None:
    """Write the advice row first: the lock that orders every decision about it."""
    session.execute(update(Advice).where(Advice.id == advice_id).values(stage=Advice.stage))
    return session.get(Advice, advice_id, populate_existing=True)


def experiment_ids(advice: Advice) -> list[str]:
    """The advice's experiments so far: its search, then its replicates (and the other schedules)."""
    found = [(advice.plan.get("search") or {}).get("experiment_id")]
    replicates = advice.plan.get("replicates") or {}
    found += [replicates.get("experiment_id"), replicates.get("schedules_experiment_id")]
    return [e for e in found if e]


def stage_experiments(advice: Advice) -> list[str]:
    """The experiments of the stage the advice is in (none for the range tests)."""
    if advice.stage == AdviceStage.search.value:
        return [advice.plan["search"]["experiment_id"]]
    if advice.stage == AdviceStage.replicates.value:
        replicates = advice.plan["replicates"]
        return [e for e in (replicates["experiment_id"], replicates.get("schedules_experiment_id")) if e]
    return []


def stage_done(session: Session, advice: Advice) -> bool:
    """Whether every object of the advice's current stage has finished."""
    if advice.stage == AdviceStage.range_tests.value:
        pending = exists().where(LrFinder.advice_id == advice.id, LrFinder.status.in_(ACTIVE))
    elif advice.stage in (AdviceStage.search.value, AdviceStage.replicates.value):
        pending = exists().where(Run.experiment_id.in_(stage_experiments(advice)), Run.status.in_(ACTIVE))
    else:
        return False
    return not session.scalar(select(pending))


def advance(advice_id: str) -> tuple[bool, list[Message]]:
    """Move the advice on if its current stage has finished: (whether it moved, the next stage's messages: send
    them after this returns, outbox.send)."""
    with session_scope() as session:
        advice = _lock(session, advice_id)
        if advice is None or AdviceStatus(advice.status).is_finished() or not stage_done(session, advice):
            return False, []
        if advice.started_at is None:
            advice.started_at = utcnow()
        advice.status = AdviceStatus.running.value
        stage = advice.stage
        try:
            if stage == AdviceStage.range_tests.value:
                messages = _start_search(session, advice, request_of(advice))
            elif stage == AdviceStage.search.value:
                messages = _start_replicates(session, advice, request_of(advice))
            else:
                messages = _decide(session, advice, request_of(advice))
        except ValueError as exc:  # a stage that cannot be built from what came before: say why, do not loop
            log.exception("advice %s: could not move on from %s", advice_id, stage)
            _fail(advice, f"could not move on from the {stage} stage: {exc}")
            messages = []
        log.info("advice %s: %s -> %s (%s)", advice_id, stage, advice.stage, advice.status)
        return True, messages


def _fail(advice: Advice, why: str) -> None:
    advice.status, advice.error, advice.finished_at = AdviceStatus.failed.value, why[:4000], utcnow()


def _base(request: AdviceCreate, optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The base run spec of a stage: the request's, with the first schedule (and the optimizer, if given)."""
    spec = request.base.to_json()
    spec["schedule"] = request.schedules[0].model_dump(mode="json")
    if optimizer is not None:
        spec["optimizer"] = optimizer
    return spec


def label(spec: RunSpec, request: AdviceCreate) -> str:
    """A configuration as the advice names it everywhere (`adam 3e-3`, `adam 3e-3 cosine`): the schedule only when
    it is not the advice's first."""
    schedule = None if spec.schedule == request.schedules[0] else plan.schedule_label(spec.schedule)
    return plan.config_label(spec.optimizer, spec.optimizer.lr, schedule)


def _experiment(
    session: Session, advice: Advice, request: AdviceCreate, body: dict[str, Any]
) -> tuple[Experiment, list[Message]]:
    """An experiment of the advice's, created as POST /v1/experiments creates one, queued and stamped. Its runs
    are labelled as the advice names their configurations, so a comparison across its experiments (its
    compare_url) groups each configuration's replicates under one name."""
    grid = ExperimentCreate.model_validate(body)
    cells = [
        dataclasses.replace(c, config=label(c.spec, request), label=f"{label(c.spec, request)} seed={c.spec.seed}")
        for c in experiments.expand(grid)
    ]
    experiment, runs = experiments.create_experiment(session, grid, cells, owner=advice.owner)
    experiment.advice_id = advice.id
    return experiment, outbox.experiment(session, experiment.execution, runs)


def _start_search(session: Session, advice: Advice, request: AdviceCreate) -> list[Message]:
    """Range tests -> search: each optimizer at the lrs around its suggestion, under successive halving."""
    tests, cells = [], []
    for test, optimizer in zip(advice.plan["range_tests"], request.optimizers, strict=True):
        job = session.get(LrFinder, test["job_id"])
        assert job is not None
        center, source = plan.center(job.status, job.result, job.error, optimizer.lr)
        lrs = plan.search_lrs(center)
        tests.append({**test, "center_lr": center, "source": source, "lrs": lrs})
        cells += [{**optimizer.model_dump(mode="json"), "lr": lr} for lr in lrs]
    body: dict[str, Any] = {
        "name": f"{advice.name}: search",
        "base": _base(request),
        "grid": {"optimizer": cells},
    }
    stopping = plan.early_stopping(request.base.epochs)
    if stopping is not None:
        body["early_stopping"] = stopping.model_dump(mode="json")
    experiment, messages = _experiment(session, advice, request, body)
    advice.plan = {
        **advice.plan,
        "range_tests": tests,
        "search": {
            "experiment_id": experiment.id,
            "early_stopping": stopping.model_dump(mode="json") if stopping else None,
        },
    }
    advice.stage = AdviceStage.search.value
    return messages


def tried(session: Session, experiment_id: str) -> list[plan.Tried]:
    """The search's runs as the ranking sees them, in grid order."""
    out = []
    for run in experiments.members(session, experiment_id):
        spec = RunSpec.model_validate(run.spec)
        summary = run.summary or {}
        out.append(
            plan.Tried(
                run_id=run.id,
                key=settings_key(spec.optimizer),
                label=plan.optimizer_label(spec.optimizer),
                lr=spec.optimizer.lr,
                status=run.status,
                epochs=int(summary.get("epochs_completed") or 0),
                best=analysis.summary_value({"summary": summary}, plan.METRIC),
            )
        )
    return out


def _start_replicates(session: Session, advice: Advice, request: AdviceCreate) -> list[Message]:
    """Search -> replicates: the finalists over every seed at full budget; the other schedules on the best."""
    search = advice.plan["search"]
    ranked = plan.rank(tried(session, search["experiment_id"]), request.base.epochs)
    chosen = plan.finalists(ranked, request.base.epochs)
    if not chosen:
        errors = [r.error for r in experiments.members(session, search["experiment_id"]) if r.error]
        why = f" (first error: {errors[0]})" if errors else ""
        _fail(advice, f"no run of the search finished without failing or diverging{why}")
        return []
    specs = {r.id: r.spec for r in experiments.members(session, search["experiment_id"])}
    seeds = [request.base.seed + k for k in range(request.seeds)]
    replicates, messages = _experiment(
        session,
        advice,
        request,
        {
            "name": f"{advice.name}: replicates",
            "base": _base(request),
            "grid": {"optimizer": [specs[c.run_id]["optimizer"] for c in chosen], "seed": seeds},
        },
    )
    schedules_id = None
    if len(request.schedules) > 1:
        others, more = _experiment(
            session,
            advice,
            request,
            {
                "name": f"{advice.name}: schedules",
                "base": _base(request, specs[chosen[0].run_id]["optimizer"]),
                "grid": {"schedule": [s.model_dump(mode="json") for s in request.schedules[1:]], "seed": seeds},
            },
        )
        schedules_id, messages = others.id, messages + more
    advice.plan = {
        **advice.plan,
        "search": {**search, "finalists": [c.run_id for c in chosen]},
        "replicates": {"experiment_id": replicates.id, "schedules_experiment_id": schedules_id},
    }
    advice.stage = AdviceStage.replicates.value
    return messages


def contenders(session: Session, advice: Advice, request: AdviceCreate) -> list[tuple[plan.Contender, RunSpec]]:
    """Stage 3's configurations with their replicates' statistics, best mean first, and a spec of each."""
    entries: list[dict[str, Any]] = []
    meta: dict[str, tuple[str, float, RunSpec]] = {}
    ids = [e for e in experiment_ids(advice) if e != (advice.plan.get("search") or {}).get("experiment_id")]
    for run in session.scalars(select(Run).where(Run.experiment_id.in_(ids)).order_by(Run.created_at, Run.id)):
        spec = RunSpec.model_validate(run.spec)
        name = label(spec, request)
        entries.append(
            {"run_id": run.id, "config": name, "seed": spec.seed, "status": run.status, "summary": run.summary}
        )
        meta.setdefault(name, (settings_key(spec.optimizer), spec.optimizer.lr, spec))
    groups = analysis.group_replicates(entries, plan.METRIC)
    return [(plan.Contender(g, meta[g.label][0], meta[g.label][1]), meta[g.label][2]) for g in groups]


def _decide(session: Session, advice: Advice, request: AdviceCreate) -> list[Message]:
    """Replicates -> verdict: the winner, the runner-up and a t-interval on their difference."""
    found = contenders(session, advice, request)
    winner, runner_up = plan.decide([c for c, _ in found])
    if winner is None:
        _fail(advice, "every replicate failed or was cancelled: there is nothing to recommend")
        return []
    verdict = analysis.verdict(winner.group, runner_up.group, plan.METRIC) if runner_up is not None else None
    advice.result = {
        "recommendation": winner.group.label,
        "runner_up": runner_up.group.label if runner_up is not None else None,
        "verdict": plan.advice_verdict(verdict).model_dump(mode="json") if verdict is not None else None,
    }
    advice.stage, advice.status, advice.finished_at = (
        AdviceStage.verdict.value,
        AdviceStatus.succeeded.value,
        utcnow(),
    )
    return []


# --- who calls advance ----------------------------------------------------------------------------------


def after_run(run_id: str) -> list[Message]:
    """A run ended (its outcome is recorded): move its advice on if it was its stage's last. Messages to send."""
    with session_scope() as session:
        advice_id = session.scalar(
            select(Experiment.advice_id).join(Run, Run.experiment_id == Experiment.id).where(Run.id == run_id)
        )
    return advance(advice_id)[1] if advice_id else []


def after_runs(run_ids: list[str]) -> list[Message]:
    """after_run for several runs recorded together (a fused pack's members): each advice moved on once."""
    with session_scope() as session:
        advice_ids = set(
            session.scalars(
                select(Experiment.advice_id)
                .join(Run, Run.experiment_id == Experiment.id)
                .where(Run.id.in_(run_ids), Experiment.advice_id.is_not(None))
            )
        )
    return [m for advice_id in sorted(a for a in advice_ids if a) for m in advance(advice_id)[1]]


def after_job(job_id: str) -> list[Message]:
    """An lr-finder job ended: as after_run."""
    with session_scope() as session:
        advice_id = session.scalar(select(LrFinder.advice_id).where(LrFinder.id == job_id))
    return advance(advice_id)[1] if advice_id else []


def reconcile(*, app: Celery | None = None) -> list[str]:
    """Advance every active advice whose stage finished with nobody to move it on; the ids moved."""
    with session_scope() as session:
        active = session.scalars(
            select(Advice).where(Advice.status.in_(ACTIVE)).order_by(Advice.created_at).limit(BATCH)
        ).all()
        due = [a.id for a in active if stage_done(session, a)]
    moved = []
    for advice_id in due:
        try:
            advanced, messages = advance(advice_id)  # decides only if still due, under the advice's lock
        except Exception:  # one advice that cannot move on (logged) holds up neither the others nor the pass
            log.exception("advice %s: could not move it on; the next pass tries again", advice_id)
            continue
        outbox.send(messages, app=app)
        if advanced:
            moved.append(advice_id)
    return moved


# --- cancel -------------------------------------------------------------------------------------------


def cancel(session: Session, advice: Advice) -> bool:
    """Stop every stage: queued objects at once, training ones at their next epoch or step. False: it had
    already finished, nothing changed."""
    locked = _lock(session, advice.id)
    if locked is None or AdviceStatus(locked.status).is_finished():
        return False
    locked.status, locked.finished_at = AdviceStatus.cancelled.value, utcnow()
    for job in session.scalars(select(LrFinder).where(LrFinder.advice_id == advice.id, LrFinder.status.in_(ACTIVE))):
        sweeps.request_cancel(session, job)
    runs = select(Run).where(Run.experiment_id.in_(experiment_ids(locked)), Run.status.in_(ACTIVE))
    for run in session.scalars(runs):
        store.request_cancel(session, run)
    return True
