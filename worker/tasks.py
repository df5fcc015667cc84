"""Tasks: ids in, the real work in worker.execute (and below it trainer/ and lrlab/)."""

from __future__ import annotations

from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError

from lrlab.logs import run_context
from lrlab.queue import FIND_LR, TRAIN_PACK, TRAIN_PBT, TRAIN_RUN
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


@app.task(name=TRAIN_RUN, **TASK_OPTIONS)
def train_run(self, run_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    # Imported here, not at module top: the prefork parent must never initialise torch (fork-unsafe).
    from worker.execute import execute_run

    with run_context(run_id):
        execute_run(run_id, worker=self.request.hostname or "worker")


@app.task(name=FIND_LR, **TASK_OPTIONS)
def find_lr(self, job_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker.find_lr import execute_lr_finder

    with run_context(job_id):
        execute_lr_finder(job_id, worker=self.request.hostname or "worker")


@app.task(name=TRAIN_PACK, **TASK_OPTIONS)
def train_pack(self, run_ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker.pack import execute_pack

    with run_context(",".join(run_ids)):  # a pack's lines are about all of its runs
        execute_pack(run_ids, worker=self.request.hostname or "worker")


@app.task(name=TRAIN_PBT, **TASK_OPTIONS)
def train_pbt(self, pbt_id: str) -> None:  # type: ignore[no-untyped-def]
    _not_while_shutting_down()
    from worker.pbt import execute_round

    with run_context(pbt_id):
        execute_round(pbt_id, worker=self.request.hostname or "worker")
