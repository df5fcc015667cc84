"""A search's Optuna study, in lrlab's own database, driven by ask-and-tell.

The study lives in Optuna's RDB storage on the same SQLAlchemy URL as everything else (LRLAB_DATABASE_URL:
`postgresql+psycopg://…`, or SQLite in the embedded default), so `optuna.load_study(study_name=...,
storage=<that URL>)` and `optuna-dashboard <that URL>` open it with all its trials. Optuna keeps its schema
revision in `alembic_version`, lrlab in `lrlab_alembic_version` (lrlab.migrate).

lrlab asks `parallel` trials at a time (each becomes a run spec), reports each trained epoch as an
intermediate value, and tells each result once: `report` and `tell` on a finished trial do nothing and say so,
so a redelivered task or a recovering worker cannot tell a trial twice. An asked trial that no run holds yet
is still RUNNING in the study (`running`), so a crash between asking and recording loses no trial. Samplers
are Optuna's own; they keep no state between asks but their random generator, which is seeded afresh from the
search's seed and the number of trials asked so far (a sampler rebuilt with one seed would ask the same
configurations again).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from lrlab.schemas.search import Distribution, SearchChoice, SearchCreate, SearchInt, SearchLogUniform, apply_params
from lrlab.schemas.spec import RunSpec

State = Literal["running", "complete", "pruned", "failed", "waiting"]
STATES: dict[TrialState, State] = {
    TrialState.RUNNING: "running",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.WAITING: "waiting",
}
TELLABLE: dict[str, TrialState] = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}
# Optuna's records go through the process's logging (lrlab.logs), not a stderr handler of Optuna's own.
optuna.logging.disable_default_handler()
optuna.logging.enable_propagation()
INVALID_ATTR = "lrlab_invalid"  # a failed trial's reason when its configuration made no valid run spec
OPTUNA_SETUP_LOCK = 0x1A1AB0018  # any constant (lrlab.migrate's is ...17): Optuna's first set-up takes turns
MAX_ASK_ATTEMPTS = 4  # per trial wanted: asks that make an invalid spec are told failed and asked again


@dataclass(frozen=True)
class Trial:
    """One trial as lrlab sees it: Optuna's number in the study, its parameters, and what was told."""

    number: int
    params: dict[str, Any]
    state: State
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)  # epoch -> value (NaN kept as NaN)


@dataclass(frozen=True)
class Asked:
    trial: Trial
    spec: RunSpec


def study_name(search_id: str) -> str:
    return f"lrlab-search-{search_id}"


_storages: dict[str, optuna.storages.RDBStorage] = {}
_storages_lock = threading.Lock()


def storage(url: str) -> optuna.storages.RDBStorage:
    """The process's Optuna storage for `url` (one engine per URL, as lrlab.db keeps its own)."""
    with _storages_lock:
        if url not in _storages:
            _storages[url] = _open(url)
        return _storages[url]


def _open(url: str) -> optuna.storages.RDBStorage:
    """Optuna creates its tables (and, on Postgres, enum types) the first time any process opens the storage:
    two processes doing it at once collide (`studydirection` already exists). On Postgres they take turns on an
    advisory lock; on SQLite a second try finds the tables made."""
    if url.startswith("sqlite"):
        # lrlab's engine puts the file in WAL mode (it persists): api, worker and Optuna read beside a writer
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
        try:
            found = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, OperationalError):
            found = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        _write_lock_first(found.engine)
        return found
    kwargs = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 4}
    locker = create_engine(url, poolclass=NullPool)
    try:
        with locker.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": OPTUNA_SETUP_LOCK})
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": OPTUNA_SETUP_LOCK})
    finally:
        locker.dispose()


def _write_lock_first(engine: Engine) -> None:
    """Every Optuna transaction on SQLite starts with BEGIN IMMEDIATE (SQLAlchemy's pysqlite recipe).

    Optuna checks that a trial is still running and then writes it, in one session; it locks the row on
    Postgres (SELECT ... FOR UPDATE), but on SQLite the driver starts the transaction only at the write, so
    two tellers both saw RUNNING and the second overwrote the first. Taking the database's write lock when
    the transaction begins makes the check and the write one step.
    """

    @event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver issues no BEGIN of its own

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna set the storage up predate the listeners


def reset_storages() -> None:
    """Forget the storages (a forked worker process must not share its parent's connections)."""
    with _storages_lock:
        for cached in _storages.values():
            cached.engine.dispose()
        _storages.clear()


def create(url: str, name: str, direction: Literal["maximize", "minimize"]) -> None:
    """Create the study (or find it, when a redelivered task creates it again)."""
    optuna.create_study(storage=storage(url), study_name=name, direction=direction, load_if_exists=True)


def distributions(space: dict[str, Distribution]) -> dict[str, BaseDistribution]:
    """The space in Optuna's terms, one distribution per key (the key is the parameter's name)."""
    out: dict[str, BaseDistribution] = {}
    for key, d in space.items():
        if isinstance(d, SearchLogUniform):
            out[key] = FloatDistribution(*d.log_uniform, log=True)
        elif isinstance(d, SearchInt):
            out[key] = IntDistribution(*d.int)
        elif isinstance(d, SearchChoice):
            out[key] = CategoricalDistribution(d.choice)
        else:
            out[key] = FloatDistribution(*d.uniform)
    return out


def _sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    # constant_liar: trials asked but not yet told count as bad, so `parallel` asks at once spread out
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _load(url: str, name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage(url), sampler=sampler)


def _trial(frozen: FrozenTrial) -> Trial:
    return Trial(
        number=frozen.number,
        params=dict(frozen.params),
        state=STATES[frozen.state],
        value=frozen.value if frozen.state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        intermediate=dict(frozen.intermediate_values),
    )


def ask(url: str, name: str, request: SearchCreate, n: int) -> list[Asked]:
    """Ask for `n` trials and their run specs. A configuration that makes no valid run spec (two searched
    keys that only clash together) is told failed, its reason kept, and another is asked, up to a bound."""
    study = _load(url, name)
    asked_so_far = len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(request.sampler, (request.seed * 1_000_003 + asked_so_far) % 2**32)
    dists = distributions(request.space)
    out: list[Asked] = []
    for _ in range(MAX_ASK_ATTEMPTS * n):
        if len(out) == n:
            break
        trial = study.ask(dists)
        try:
            spec = apply_params(request.base, trial.params)
        except ValidationError as exc:
            trial.set_user_attr(INVALID_ATTR, exc.errors()[0]["msg"])
            study.tell(trial, state=TrialState.FAIL)
            continue
        out.append(Asked(Trial(trial.number, dict(trial.params), "running"), spec))
    return out


def spec_of(request: SearchCreate, trial: Trial) -> RunSpec:
    """A trial's run spec again (a recovering worker re-creates the run of a trial it had asked)."""
    return apply_params(request.base, trial.params)


def _trial_id(url: str, name: str, number: int) -> int:
    st = storage(url)
    return st.get_trial_id_from_study_id_trial_number(st.get_study_id_from_name(name), number)


def report(url: str, name: str, number: int, epoch: int, value: float | None) -> bool:
    """Record trial `number`'s metric after `epoch` (an upsert: a repeated epoch overwrites). False when the
    trial is already finished (nothing written). A missing value is stored as NaN, Optuna's worst."""
    st = storage(url)
    try:
        st.set_trial_intermediate_value(
            _trial_id(url, name, number), epoch, float("nan") if value is None else float(value)
        )
    except UpdateFinishedTrialError:
        return False
    return True


def tell(url: str, name: str, number: int, state: Literal["complete", "pruned", "failed"], value: float | None) -> bool:
    """Tell trial `number`'s outcome once: True if this call told it, False if it was already finished.

    `complete` needs a finite value (anything else is told `failed`); `pruned` takes the last reported epoch's
    value, as Optuna does; `failed` keeps no value. Two tellers racing: the storage locks the trial's row and
    refuses the second (UpdateFinishedTrialError), which is a False here.
    """
    study = _load(url, name)
    told = TELLABLE[state]
    if told == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        told, value = TrialState.FAIL, None
    try:
        study.tell(number, value if told == TrialState.COMPLETE else None, state=told)
    except UpdateFinishedTrialError:  # finished between Optuna's own check and its (locked) write
        return False
    except ValueError:  # "Cannot tell a COMPLETE trial": finished before this call
        if storage(url).get_trial(_trial_id(url, name, number)).state.is_finished():
            return False
        raise
    return True


def trials(url: str, name: str) -> list[Trial]:
    return [_trial(t) for t in _load(url, name).get_trials(deepcopy=False)]


def running(url: str, name: str) -> list[Trial]:
    """Trials asked and not yet told: after a crash, those whose runs were never recorded are re-created."""
    states = (TrialState.RUNNING,)
    return [_trial(t) for t in _load(url, name).get_trials(deepcopy=False, states=states)]


def best(url: str, name: str) -> Trial | None:
    """The best complete trial (a pruned one trained less: it is not compared at the same budget)."""
    study = _load(url, name)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return _trial(study.best_trial)


def importances(url: str, name: str) -> dict[str, float]:
    """Optuna's parameter importances over the complete trials (its default evaluator, PED-ANOVA in Optuna 5:
    numpy only, so the api computes them too); {} until Optuna can (at least two complete trials)."""
    study = _load(url, name)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError):  # e.g. every complete trial with one value: nothing to attribute
        return {}
