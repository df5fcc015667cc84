"""Searches in lrlab's database: a search row, its Optuna study, and trials that are runs, advanced batch by batch.

`advance` is the one step, run by the worker (lrlab.advance_search) when a search is created, after its runs
end, and by the reconciler whenever a search has not moved for LRLAB_REDISPATCH_SECONDS. Under the search's row
lock it tells the study what its finished runs came to (every epoch reported as an intermediate value first),
makes a run for any trial the study has running but no run holds (asked before a crash), and, once the batch
has ended, asks the next `parallel` trials and queues them as one fused pack where they can be stacked. So a
crashed worker or api loses no trial (an asked trial is in the study before its run is made, and found there
again), and tells none twice (a finished trial refuses a second tell: lrlab.search.study.tell).

A finished run is told as Optuna reads it: succeeded -> complete with the run's best value of the metric;
stopped by successive halving or diverged -> pruned (its last reported epoch is its value, TPE ranks it below
the complete ones); failed or cancelled -> failed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab import outbox
from lrlab.broker import choose_queue
from lrlab.db import session_scope
from lrlab.models import Run, Search, utcnow
from lrlab.outbox import Message
from lrlab.runs import store
from lrlab.runs.fusing import fusable_spec
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.search import SearchCreate, SearchPublic, TrialPublic, apply_params
from lrlab.schemas.spec import RunSpec
from lrlab.search import study
from lrlab.settings import get_settings

log = logging.getLogger(__name__)

SUMMARY_METRIC = {"val_accuracy": "best_val_accuracy", "val_loss": "min_val_loss"}


def request_of(search: Search) -> SearchCreate:
    return SearchCreate.model_validate(search.spec)


def create(session: Session, request: SearchCreate, *, owner: str) -> tuple[Search, list[Message]]:
    """The search row (queued) and the message that starts it, in the caller's transaction (send after commit).

    The study itself is created by the first advance, on the worker: the api only writes its own row.
    """
    search = Search(
        owner=owner,
        name=request.name,
        status=RunStatus.queued.value,
        spec=request.model_dump(mode="json"),
        study_name="",
        queue=choose_queue(session, request.base.device),
        created_at=utcnow(),
    )
    session.add(search)
    session.flush()
    search.study_name = study.study_name(search.id)
    return search, outbox.searches(session, [search])


def cancel(session: Session, search: Search) -> None:
    """Stop the search: no more trials; queued trial runs cancelled now, training ones at their next epoch."""
    _lock(session, search.id)
    session.refresh(search)
    if RunStatus(search.status).is_finished():
        return
    search.status, search.finished_at, search.cancel_requested = RunStatus.cancelled.value, utcnow(), True
    for run in session.scalars(select(Run).where(Run.search_id == search.id)):
        store.request_cancel(session, run)


def advance(search_id: str, url: str | None = None) -> None:
    """One step of the search (see the module doc); sends what it queued after its commit."""
    url = url or get_settings().database_url
    with session_scope() as session:
        _lock(session, search_id)
        search = session.get(Search, search_id)
        if search is None:
            return
        messages = _advance(session, search, url)
    outbox.send(messages)


def _lock(session: Session, search_id: str) -> None:
    """The search's row, locked to the end of the transaction on Postgres: advances and cancels take turns.

    On SQLite there is no row lock, and the database's write lock must not be held across Optuna's own
    transactions (they would wait for it, on another connection of the same process): an advance does all its
    Optuna work first and writes lrlab's rows after. The embedded worker advances one search at a time, and
    run.(search_id, trial) is unique, so a trial never gets two runs.
    """
    session.execute(select(Search.id).where(Search.id == search_id).with_for_update())


@dataclass
class _Plan:
    """What an advance found in the study, before it writes anything of lrlab's."""

    to_run: list[tuple[study.Trial, RunSpec]]  # trials with no run yet: orphans, then the next batch
    finished: bool  # every trial asked and told: the search ends
    any_result: bool  # some trial complete or pruned


def _advance(session: Session, search: Search, url: str) -> list[Message]:
    request = request_of(search)
    with session.no_autoflush:  # Optuna first (see _lock), lrlab's writes after
        plan = _plan(session, search, request, url)
    if search.status == RunStatus.queued.value:
        search.status, search.started_at = RunStatus.running.value, utcnow()
    search.dispatched_at = utcnow()  # it moved: the reconciler waits LRLAB_REDISPATCH_SECONDS from here
    if plan.finished:
        _finish(search, plan.any_result)
        return []
    fresh = [_run_for(session, search, trial, spec) for trial, spec in plan.to_run]
    if not fresh:
        return []
    fused = len(fresh) > 1 and all(fusable_spec(spec) for _, spec in plan.to_run)
    return outbox.experiment(session, "fused" if fused else "separate", fresh)


def _plan(session: Session, search: Search, request: SearchCreate, url: str) -> _Plan:
    name = search.study_name
    study.create(url, name, request.direction)
    runs = {r.trial: r for r in session.scalars(select(Run).where(Run.search_id == search.id)) if r.trial is not None}
    for run in runs.values():
        if RunStatus(run.status).is_finished():
            _tell(session, url, name, request, run)
    trials = study.trials(url, name)
    any_result = any(t.state in ("complete", "pruned") for t in trials)
    if RunStatus(search.status).is_finished():  # cancelled: the trials it had are told, nothing more is asked
        return _Plan([], False, any_result)
    to_run = []
    for trial in (t for t in trials if t.state == "running" and t.number not in runs):
        spec = _orphan_spec(url, search, request, trial)
        if spec is not None:
            to_run.append((trial, spec))
    active = [r for r in runs.values() if not RunStatus(r.status).is_finished()]
    remaining = request.trials - len(trials)
    if not active and not to_run and remaining > 0:
        to_run = [(a.trial, a.spec) for a in study.ask(url, name, request, min(request.parallel, remaining))]
    finished = not active and not to_run and remaining <= 0
    if finished:  # told failed just now (an orphan with no valid run) or before: read the study again
        trials = study.trials(url, name)
        finished = all(t.state != "running" for t in trials)
        any_result = any(t.state in ("complete", "pruned") for t in trials)
    return _Plan(to_run, finished, any_result)


def _orphan_spec(url: str, search: Search, request: SearchCreate, trial: study.Trial) -> RunSpec | None:
    """The run spec of a trial the study had asked but no run held (the asker crashed before its commit)."""
    try:
        spec = apply_params(request.base, trial.params)
    except ValidationError as exc:
        study.tell(url, search.study_name, trial.number, "failed", None)
        log.warning("search %s: trial %d makes no valid run (%s): told failed", search.id, trial.number, exc)
        return None
    log.info("search %s: trial %d was asked but had no run: making one", search.id, trial.number)
    return spec


def _run_for(session: Session, search: Search, trial: study.Trial, spec: RunSpec) -> Run:
    label = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    run = store.create_run(
        session,
        spec,
        search.queue,
        label=f"trial {trial.number}: {label}",
        params=dict(trial.params),
        owner=search.owner,
    )
    run.search_id, run.trial = search.id, trial.number
    session.flush()  # the unique (search_id, trial): a second run for one trial fails here, not later
    return run


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _tell(session: Session, url: str, name: str, request: SearchCreate, run: Run) -> None:
    """Report the run's epochs and tell its outcome; nothing when the trial was told before."""
    assert run.trial is not None
    status = RunStatus(run.status)
    for point in store.points(session, run.id):
        if not study.report(url, name, run.trial, point["epoch"], point.get(request.metric)):
            return  # finished already: told by an earlier advance
    if status == RunStatus.succeeded:
        value = (run.summary or {}).get(SUMMARY_METRIC[request.metric])
        study.tell(url, name, run.trial, "complete", value)
    elif status in (RunStatus.stopped, RunStatus.diverged):
        study.tell(url, name, run.trial, "pruned", None)
    else:
        study.tell(url, name, run.trial, "failed", None)


def _finish(search: Search, any_result: bool) -> None:
    if any_result:
        search.status = RunStatus.succeeded.value
    else:
        search.status, search.error = RunStatus.failed.value, "no trial trained to a result (every one failed)"
    search.finished_at = utcnow()
    log.info("search %s %s", search.id, search.status)


# --- read model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialView:
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    run: Run | None


def trial_views(session: Session, search: Search, url: str | None = None) -> list[TrialView]:
    """The study's trials with their runs (a trial asked a moment ago may not have its run yet)."""
    url = url or get_settings().database_url
    runs = {r.trial: r for r in session.scalars(select(Run).where(Run.search_id == search.id))}
    try:
        trials = study.trials(url, search.study_name)
    except KeyError:  # the study is made by the first advance: none yet
        trials = []
    return [TrialView(t.number, t.state, t.params, t.value, runs.get(t.number)) for t in trials]


def runs_of(session: Session, search_ids: Sequence[str]) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.search_id.in_(list(search_ids)))))


def follow(run_ids: Sequence[str]) -> None:
    """After these runs ended on a worker: advance the searches they are trials of, now. What fails here is
    left to the reconciler, which advances every search that has not moved for LRLAB_REDISPATCH_SECONDS."""
    with session_scope() as session:
        found = session.scalars(select(Run.search_id).where(Run.id.in_(list(run_ids)), Run.search_id.is_not(None)))
        search_ids = sorted({s for s in found if s is not None})
    for search_id in search_ids:
        try:
            advance(search_id)
        except Exception:
            log.exception("search %s: could not advance it now; the reconciler will", search_id)


def to_public(session: Session, search: Search, *, detail: bool = True) -> SearchPublic:
    """The search as the api returns it; `detail`: its trials, best and importances (the list leaves them out)."""
    public = SearchPublic(
        id=search.id,
        name=search.name,
        status=search.status,  # type: ignore[arg-type]
        spec=request_of(search),
        study_name=search.study_name,
        created_at=search.created_at,
        started_at=search.started_at,
        finished_at=search.finished_at,
        error=search.error,
        cancel_requested=search.cancel_requested,
    )
    if not detail:
        return public
    url = get_settings().database_url
    views = trial_views(session, search, url)
    public.trials = [_trial_public(v) for v in views]
    complete = [t for t in public.trials if t.state == "complete" and t.value is not None]
    if complete:
        pick = max if request_of(search).direction == "maximize" else min
        public.best = pick(complete, key=lambda t: t.value or 0.0)
        public.importances = study.importances(url, search.study_name)
    return public


def _trial_public(view: TrialView) -> TrialPublic:
    run = view.run
    summary = (run.summary or {}) if run is not None else {}
    return TrialPublic(
        number=view.number,
        state=view.state,  # type: ignore[arg-type]
        params=view.params,
        value=view.value if view.value is None or math.isfinite(view.value) else None,
        run_id=run.id if run is not None else None,
        status=RunStatus(run.status) if run is not None else None,
        epochs_completed=summary.get("epochs_completed") if run is not None else None,
        finished_at=run.finished_at if run is not None else None,
    )
