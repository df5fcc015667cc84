"""What every path on a worker does with the runs it claims: claim, write progress and checkpoints, resume, record
the outcome or the failure. The run, pack, member and lr-finder paths (run.py, pack.py, pbt.py, sweep.py) are
these steps around one call of the trainer.

An outcome is written only while the lease is ours (lrlab.runs.leases.finish_run): a run whose lease was lost, or
whose outcome could not be written because the database stayed away, is left to its lease (requeued by a
reconciler and resumed from its last checkpoint, at most MAX_ATTEMPTS claims in all). What fails for what the
run holds (bad data, a bug, an outcome that cannot be stored) would fail the same way on every attempt: it ends
the run failed, saying why.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, delete, update
from sqlalchemy.exc import OperationalError

import trainer
import trainer.loop  # torch now, before any lease is taken: its import stalls the writer thread for a second or more
from lrlab import outbox
from lrlab.advice import pipeline as advice
from lrlab.db import get_engine, session_scope
from lrlab.models import CurvePoint, Run
from lrlab.reports import columnar, curves
from lrlab.runs import leases
from lrlab.schemas import RunStatus
from lrlab.settings import get_settings
from lrlab.storage import StorageError
from worker.progress import ProgressWriter, close_writer
from worker.retry import through_outages

log = logging.getLogger(__name__)

# A trainer's result status as the run's status.
OUTCOME = {"succeeded": RunStatus.succeeded, "diverged": RunStatus.diverged, "stopped": RunStatus.cancelled}
MAX_ERROR_CHARS = 4000


def set_threads() -> None:
    # Several prefork children on one machine must share its cores rather than each take them all.
    share = get_settings().torch_threads
    if share > 0:
        import torch

        torch.set_num_threads(share)


# --- claim, progress, checkpoints -------------------------------------------------------------------


def claim(run_id: str, worker: str) -> leases.Claim | None:
    """The run under a fresh lease, or None (logged) when it is not queued any more (a duplicate message)."""
    found = leases.claim_run(run_id, worker, lease_seconds=get_settings().lease_seconds)
    if found is None:
        log.info("run %s is not queued any more; skipping", run_id)
    return found


def claim_job(job_id: str, worker: str) -> leases.JobClaim | None:
    """The lr-finder job under a fresh lease, or None (logged) when it is not queued any more."""
    found = leases.claim_lr_finder(job_id, worker, lease_seconds=get_settings().lease_seconds)
    if found is None:
        log.info("lr-finder job %s is not queued any more; skipping", job_id)
    return found


def claim_queued(run_ids: Sequence[str], worker: str) -> list[leases.Claim]:
    """Every one of these runs that is still queued, each under its own lease, claimed in one transaction."""
    return leases.claim_runs(list(run_ids), worker, lease_seconds=get_settings().lease_seconds)


def writer(claim: leases.Claim) -> ProgressWriter:
    """The claimed run's progress writer: its points, checkpoints and lease renewals, off the training thread."""
    settings = get_settings()
    return ProgressWriter(
        claim.run_id,
        lease_token=claim.token,
        lease_seconds=settings.lease_seconds,
        flush_seconds=settings.progress_flush_seconds,
    )


def set_device(run_ids: Sequence[str], device: Any, pack_id: str | None) -> None:
    """Where these runs train, and the pack they train in (None: alone)."""
    with session_scope() as session:
        session.execute(update(Run).where(Run.id.in_(run_ids)).values(device=str(device), pack_id=pack_id))


def checkpointer(
    run_id: str, progress: ProgressWriter, every: float
) -> tuple[Callable[[int], bool], Callable[[trainer.Checkpoint], None]]:
    """(checkpoint_due, on_checkpoint): at most one per `every` seconds, serialised and saved by the writer thread.

    The Checkpoint is a snapshot already (the trainer clones weights and optimizer state), so the
    training thread only enqueues it. The writer saves it in the transaction after the one holding the
    epoch's point or in the same one (the queue is FIFO and the point is put first): a stored checkpoint
    for epoch k always comes with points 1..k stored, and a resume rewrites k+1.. by upsert.

    The first is due `every` seconds into the run, not at its first epoch: a run shorter than that is trained
    again from the start if its worker dies (at most `every` seconds lost, as between two checkpoints), and a
    fused grid of short runs no longer clones and serialises every member at epoch 1 (docs/benchmarks.md).
    """
    last, newest = (time.monotonic() if every > 0 else -math.inf), 0

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


def resume_point(claim: leases.Claim, device: Any, progress: ProgressWriter) -> trainer.Checkpoint | None:
    """The checkpoint the claim carries, or None to start at epoch 1 (also for one that cannot be read)."""
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


def lease_held(claim: leases.Claim) -> bool:
    """Renew the claim's lease now, in a transaction of its own: whether the run is still ours.

    For a write outside the database (a checkpoint in the object store): made right after this, it is fenced by
    time as the leases are, since no other worker can claim the run until the lease just renewed lapses. A worker
    that lost its host and came back after its lease lapsed finds out here and writes nothing.
    """
    with get_engine().begin() as conn:
        mine, _ = leases.renew_lease(conn, claim.run_id, claim.token, get_settings().lease_seconds)
    return mine


def unreachable_storage(what: str, writers: Sequence[ProgressWriter], exc: StorageError) -> None:
    """The object store could not be reached (not the run's fault): record nothing and stop renewing, so the
    lease lapses and a reconciler queues the work again (at most MAX_ATTEMPTS claims, as for a lost worker)."""
    for w in writers:
        close_writer(w)
    log.error("%s: the object store is unreachable (%s); left to its lease, it will be queued again", what, exc)


# --- outcomes ---------------------------------------------------------------------------------------


def outcome(run_id: str, result: trainer.TrainResult, stopped_at: int | None = None) -> dict[str, Any]:
    """The run's final row values from a trainer result: status, summary of its stored curve, n_parameters.

    `stopped_at`: the rung at which successive halving stopped the run (worker/halving.py): it ends `stopped`.
    """
    return outcomes([(run_id, result, stopped_at)])[0]


def outcomes(results: Sequence[tuple[str, trainer.TrainResult, int | None]]) -> list[dict[str, Any]]:
    """outcome() of several runs, their stored curves read in one query (lrlab.reports: as columns)."""
    with session_scope() as session:
        stored = curves.fetch(session, [run_id for run_id, _, _ in results])
    return [_outcome(stored.get(run_id) or curves.empty_curve(), r, at) for run_id, r, at in results]


def _outcome(curve: curves.Curve, result: trainer.TrainResult, stopped_at: int | None) -> dict[str, Any]:
    halted = stopped_at is not None and result.status == "stopped"
    summary = columnar.summarize(
        curve,
        diverged_at=result.diverged_at,
        reason=f"not among the top runs at epoch {stopped_at} (successive halving)" if halted else result.reason,
        early_stopped=result.early_stopped,
    )
    summary.stopped_at = stopped_at if halted else None
    return {
        "status": (RunStatus.stopped if halted else OUTCOME[result.status]).value,
        "summary": summary.model_dump(mode="json"),
        "n_parameters": result.n_parameters,
    }


def failure(exc: BaseException, why: str = "") -> dict[str, Any]:
    """The row values of a run (or job) that failed with `exc`."""
    return {"status": RunStatus.failed.value, "error": f"{why}{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]}


def record(what: str, finish: Callable[..., bool], values: Callable[[], dict[str, Any]]) -> bool:
    """finish(**values()) through an outage; one that can't be made or written for what it holds ends it failed.

    False (logged): the lease is not ours any more, or the database stayed away (the lease decides then).
    """
    try:
        recorded = _finish(what, lambda: finish(**values()))
    except Exception as exc:
        log.exception("%s: its outcome could not be recorded", what)
        failed = failure(exc, "its outcome could not be recorded: ")
        recorded = _finish(what, lambda: finish(**failed))
    if recorded is False:
        log.warning("%s: lease lost before its outcome was recorded; another worker owns it", what)
    return bool(recorded)


def _finish(what: str, call: Callable[[], bool]) -> bool | None:
    """call() through an outage; None (logged) when the database stayed away."""
    try:
        return bool(through_outages(f"recording the outcome of {what}")(call))
    except OperationalError:
        log.error("%s: database unreachable, giving up; the lease will lapse and it will resume", what)
        return None


def record_outcomes(finished: Sequence[tuple[leases.Claim, trainer.TrainResult, int | None]]) -> list[bool]:
    """record_run of outcome() for several runs at once (a pack's members): their curves read in one query, their
    outcomes written in one transaction. Should anything go wrong (an outcome that cannot be made or stored, an
    outage that outlasts the retries), each is recorded alone instead, as record_run does (nothing was written)."""
    try:
        values = outcomes([(c.run_id, result, at) for c, result, at in finished])
        rows = [(c.run_id, c.token, v) for (c, _, _), v in zip(finished, values, strict=True)]
        done = through_outages(f"recording the outcomes of {len(rows)} runs")(lambda: leases.finish_runs(rows))
    except Exception:
        log.warning("recording %d outcomes together failed: recording each alone", len(finished), exc_info=True)
        return [
            record_run(c.run_id, c.token, functools.partial(outcome, c.run_id, result, at))
            for c, result, at in finished
        ]
    for (c, _, _), recorded in zip(finished, done, strict=True):
        if not recorded:
            log.warning("run %s: lease lost before its outcome was recorded; another worker owns it", c.run_id)
    recorded_ids = [c.run_id for (c, _, _), ok in zip(finished, done, strict=True) if ok]
    if recorded_ids:
        try:  # each advice they belong to moved on once (as advance_advice does for one run)
            messages = advice.after_runs(recorded_ids)
        except Exception:
            log.exception("could not move on the advice of runs %s", ", ".join(recorded_ids))
        else:
            outbox.send(messages)
    return done


def record_run(run_id: str, token: str, values: Callable[[], dict[str, Any]]) -> bool:
    recorded = record(f"run {run_id}", functools.partial(leases.finish_run, run_id, token), values)
    if recorded:
        advance_advice(run_id=run_id)
    return recorded


def advance_advice(*, run_id: str | None = None, job_id: str | None = None) -> None:
    """An outcome was just recorded: if it ended a stage of an advice, move the advice on (lrlab.advice.pipeline)
    and send what that queued. Should this fail, a reconciler pass moves the advice on instead."""
    try:
        messages = advice.after_run(run_id) if run_id is not None else advice.after_job(str(job_id))
    except Exception:
        log.exception("could not move on the advice of %s", f"run {run_id}" if run_id else f"lr-finder job {job_id}")
        return
    outbox.send(messages)


def record_failure(run_id: str, token: str, exc: BaseException) -> bool:
    """The run failed with `exc`: say so, while the lease is ours."""
    return record_run(run_id, token, lambda: failure(exc))


def handed_back(run_id: str, token: str, progress: ProgressWriter, result: trainer.TrainResult) -> bool:
    """True when the trainer stopped because this worker is shutting down (not for a cancel): the run is then
    given back, queued again at once to resume from the checkpoint of the epoch it stopped at."""
    if result.status != "stopped" or not progress.hand_back.is_set() or progress.cancel_requested.is_set():
        return False
    try:
        released = through_outages(f"handing back run {run_id}")(lambda: leases.release_run(run_id, token))
    except OperationalError:  # the database stayed away: the lease lapses and the reconciler requeues it
        log.error("run %s: database unreachable, could not hand it back; its lease decides", run_id)
        return True
    if released:
        log.info("run %s handed back after epoch %d: the worker is shutting down", run_id, len(result.points))
    return True
