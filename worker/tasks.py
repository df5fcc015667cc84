"""Tasks, thin as views: an id in, the claim, then the path that trains it (run.py, pack.py, pbt.py, sweep.py);
the real work is in trainer/ and lrlab/."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError

from lrlab.broker import ADVANCE_SEARCH, FIND_LR, TRAIN_PACK, TRAIN_PBT, TRAIN_RUN
from lrlab.logs import run_context
from worker import progress
from worker.app import app

# Late acks (a task dies with its worker and is redelivered), results live in Postgres, and only transient
# database errors are retried, with backoff: the leases decide everything else.
TASK_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "ignore_result": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": 8,
}


def _not_while_shutting_down() -> None:
    """A message that arrives once the warm shutdown began (e.g. a run this worker just handed back) goes back
    to the broker untouched, for the next worker."""
    if progress.shutting_down.is_set():
        raise Reject("the worker is shutting down", requeue=True)


def _worker(task: Any) -> str:
    return str(task.request.hostname or "worker")


# The paths are imported inside the tasks, not at the top: the prefork parent must never initialise torch.
# `held()`: the uploaded datasets a task's runs train on stay in the worker's cache until the task ends.


@app.task(name=TRAIN_RUN, **TASK_OPTIONS)
def train_run(self, run_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker import pbt, run, steps
    from worker.uploads import held

    with run_context(run_id), held():
        claim = steps.claim(run_id, _worker(self))
        if claim is None:
            return
        if claim.pbt_id is not None:  # a population member: one interval, then the population decides
            pbt.train_member(claim)
        else:
            run.train(claim)


@app.task(name=FIND_LR, **TASK_OPTIONS)
def find_lr(self, job_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker import steps, sweep
    from worker.uploads import held

    with run_context(job_id), held():
        claim = steps.claim_job(job_id, _worker(self))
        if claim is not None:
            sweep.sweep(claim)


@app.task(name=TRAIN_PACK, **TASK_OPTIONS)
def train_pack(self, run_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker import pack
    from worker.uploads import held

    with run_context(",".join(run_ids)), held():  # a pack's lines are about all of its runs
        pack.train_pack(run_ids, _worker(self))  # claims what it can fuse, sends the rest on


@app.task(name=ADVANCE_SEARCH, **TASK_OPTIONS)
def advance_search(self, search_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from lrlab.search import driver

    with run_context(search_id):
        driver.advance(search_id)  # tell what ended, ask the next trials, queue their runs


@app.task(name=TRAIN_PBT, **TASK_OPTIONS)
def train_pbt(self, pbt_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker import pbt
    from worker.uploads import held

    with run_context(pbt_id), held():
        pbt.train_round(pbt_id, _worker(self))  # claims every queued member
