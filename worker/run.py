"""One run on a worker: claim it under a lease, resume or start, persist epochs and checkpoints, record the outcome.

The outcome is written only while the lease is ours (lrlab.leases.finish_run). A run whose lease was lost,
or whose progress could not be written because the database stayed away, is left alone: its lease lapses,
a reconciler requeues it and a worker resumes it from the last checkpoint (at most MAX_ATTEMPTS claims in
all). Errors of the run itself (bad data, a bug), and an outcome that can't be written for what it holds
(which would fail the same way on every attempt), end it as failed, saying why.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from sqlalchemy import Connection, delete, update
from sqlalchemy.exc import OperationalError

import trainer
import trainer.loop  # torch now, before any lease is taken: its import stalls the writer thread for a second or more
from lrlab import leases
from lrlab.analysis import summarize
from lrlab.db import session_scope
from lrlab.models import CurvePoint, Run
from lrlab.schemas import RunStatus
from lrlab.settings import get_settings
from lrlab.store import points
from worker.datasets import materialize
from worker.progress import ProgressWriter

log = logging.getLogger(__name__)

OUTCOME = {"succeeded": RunStatus.succeeded, "diverged": RunStatus.diverged, "stopped": RunStatus.cancelled}
# How long the final write keeps trying through a database outage; after that the lease decides.
RECORD_RETRY_SECONDS = 60.0

T = TypeVar("T")


def _set_threads() -> None:
    # Several prefork children on one machine must share its cores rather than each take them all.
    share = get_settings().torch_threads
    if share > 0:
        import torch

        torch.set_num_threads(share)


def _retrying(what: str, fn: Callable[[], T]) -> T | None:
    """fn() with backoff through OperationalError for a while; None if the database stayed away."""
    deadline, delay = time.monotonic() + RECORD_RETRY_SECONDS, 0.2
    while True:
        try:
            return fn()
        except OperationalError as exc:
            if time.monotonic() > deadline:
                log.error("%s: database unreachable, giving up; the lease will lapse and the run resume", what)
                return None
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _checkpointer(
    run_id: str, progress: ProgressWriter, every: float
) -> tuple[Callable[[int], bool], Callable[[trainer.Checkpoint], None]]:
    """(checkpoint_due, on_checkpoint): at most one per `every` seconds, serialised and saved by the writer thread.

    The Checkpoint is a snapshot already (the trainer clones weights and optimizer state), so the
    training thread only enqueues it. The writer saves it in the transaction after the one holding the
    epoch's point or in the same one (the queue is FIFO and the point is put first): a stored checkpoint
    for epoch k always comes with points 1..k stored, and a resume rewrites k+1.. by upsert.
    """
    last, newest = -math.inf, 0

    def due(epoch: int) -> bool:  # the trainer builds (clones) a checkpoint only when one is due
        # a worker shutting down checkpoints this epoch and stops after it (ProgressWriter.shutdown_due)
        return progress.shutdown_due() or time.monotonic() - last >= every

    def save(ckpt: trainer.Checkpoint) -> None:
        nonlocal last, newest
        last, newest = time.monotonic(), ckpt.epoch

        def write(conn: Connection) -> None:
            if ckpt.epoch < newest:  # superseded by one already queued behind it: skip the serialisation
                return
            leases.save_checkpoint(conn, run_id, ckpt.epoch, trainer.checkpoint_to_bytes(ckpt))

        progress.put_action(write)

    return due, save


def _resume_point(claim: leases.Claim, device: Any, progress: ProgressWriter) -> trainer.Checkpoint | None:
    if claim.checkpoint is None:
        return None
    try:
        start = trainer.checkpoint_from_bytes(claim.checkpoint, device)
    except Exception:  # e.g. written by an older trainer version: train again from epoch 1
        log.warning("run %s: checkpoint unreadable, starting over", claim.run_id, exc_info=True)
        progress.put_action(lambda conn: conn.execute(delete(CurvePoint).where(CurvePoint.run_id == claim.run_id)))
        return None
    log.info("run %s: attempt %d resumes after epoch %d", claim.run_id, claim.attempts, start.epoch)
    return start


def execute_run(run_id: str, worker: str) -> None:
    settings = get_settings()
    claim = leases.claim_run(run_id, worker, lease_seconds=settings.lease_seconds)
    if claim is None:
        log.info("run %s is not queued any more; skipping", run_id)
        return
    if claim.pbt_id is not None:  # a population member: one interval, then the population decides
        from worker.pbt import train_member

        train_member(claim)
        return
    _set_threads()
    progress = ProgressWriter(
        run_id,
        lease_token=claim.token,
        lease_seconds=settings.lease_seconds,
        flush_seconds=settings.progress_flush_seconds,
    )
    try:
        config = trainer.RunConfig.from_spec(materialize(claim.spec))
        checkpoint_due, on_checkpoint = _checkpointer(run_id, progress, settings.checkpoint_seconds)
        device = trainer.resolve_device(claim.spec.get("device", "auto"))
        progress.put_action(lambda conn: conn.execute(update(Run).where(Run.id == run_id).values(device=str(device))))
        result = trainer.train(
            config,
            device=device,
            data_root=settings.dataset_root,
            on_epoch=lambda point: progress.put_point(asdict(point)),
            should_stop=progress.should_stop,
            start=_resume_point(claim, device, progress),
            checkpoint_due=checkpoint_due,
            on_checkpoint=on_checkpoint,
        )
        progress.close()
    except Exception as exc:
        try:
            progress.close()
        except RuntimeError:
            log.warning("progress of run %s was not fully recorded", run_id, exc_info=True)
        if progress.lost.is_set():
            log.warning("run %s ended here (%s) and is not ours any more: %s", run_id, progress.lost_reason, exc)
            return
        log.exception("run %s failed", run_id)
        error = f"{type(exc).__name__}: {exc}"[:4000]
        _record(run_id, claim.token, lambda: {"status": RunStatus.failed.value, "error": error})
        return
    if progress.lost.is_set():
        log.warning("run %s: %s; leaving its outcome to the worker that resumes it", run_id, progress.lost_reason)
        return
    if handed_back(run_id, claim.token, progress, result):
        return

    if _record(run_id, claim.token, functools.partial(outcome, run_id, result)):
        log.info("run %s %s after %d epochs", run_id, result.status, len(result.points))


def handed_back(run_id: str, token: str, progress: ProgressWriter, result: trainer.TrainResult) -> bool:
    """True when the trainer stopped because this worker is shutting down (not for a cancel): the run is then
    given back, queued again at once to resume from the checkpoint of the epoch it stopped at."""
    if result.status != "stopped" or not progress.hand_back.is_set() or progress.cancel_requested.is_set():
        return False
    if _retrying(f"handing back run {run_id}", lambda: leases.release_run(run_id, token)):
        log.info("run %s handed back after epoch %d: the worker is shutting down", run_id, len(result.points))
    return True


def outcome(run_id: str, result: trainer.TrainResult) -> dict[str, Any]:
    """The run's final row values from its trainer.TrainResult (trained alone or in a population)."""
    with session_scope() as session:
        summary = summarize(
            points(session, run_id),
            diverged_at=result.diverged_at,
            reason=result.reason,
            early_stopped=result.early_stopped,
        )
    return {
        "status": OUTCOME[result.status].value,
        "summary": summary.model_dump(mode="json"),
        "n_parameters": result.n_parameters,
    }


def _record(run_id: str, token: str, values: Callable[[], dict[str, Any]]) -> bool:
    """Write the outcome; one that can't be made or written (other than through an outage) ends the run failed."""
    what = f"recording the outcome of run {run_id}"
    try:
        recorded = _retrying(what, lambda: leases.finish_run(run_id, token, **values()))
    except Exception as exc:
        log.exception("run %s: its outcome could not be recorded", run_id)
        error = f"its outcome could not be recorded: {type(exc).__name__}: {exc}"[:4000]
        recorded = _retrying(what, lambda: leases.finish_run(run_id, token, status=RunStatus.failed.value, error=error))
    if recorded is False:
        log.warning("run %s: lease lost before its outcome was recorded; another worker owns it", run_id)
    return bool(recorded)
