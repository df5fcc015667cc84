"""One claimed run on a worker: resume or start, train, persist each epoch and checkpoint, record the outcome."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import update

import trainer
from lrlab.models import Run
from lrlab.runs import leases
from lrlab.search import driver as searches
from lrlab.settings import get_settings
from lrlab.storage import StorageError
from worker import steps
from worker.halving import Halving, halving_for
from worker.progress import ProgressWriter, close_writer
from worker.uploads import materialize

log = logging.getLogger(__name__)


def train(claim: leases.Claim) -> None:
    """Train the run this worker claimed (tasks.train_run), as far as its lease stays ours."""
    run_id, settings = claim.run_id, get_settings()
    steps.set_threads()
    progress = steps.writer(claim)
    halving = halving_for([run_id])  # successive halving over its experiment or search, if asked for
    try:
        config = trainer.RunConfig.from_spec(materialize(claim.spec))
        checkpoint_due, on_checkpoint = steps.checkpointer(run_id, progress, settings.checkpoint_seconds)
        if halving is not None:
            checkpoint_due = functools.partial(_due_off_rungs, halving, run_id, checkpoint_due)
        device = trainer.resolve_device(claim.spec.get("device", "auto"))
        progress.put_action(lambda conn: conn.execute(update(Run).where(Run.id == run_id).values(device=str(device))))
        result = trainer.train(
            config,
            device=device,
            data_root=settings.dataset_root,
            on_epoch=lambda point: _on_point(progress, halving, run_id, asdict(point)),
            should_stop=lambda: progress.should_stop() or (halving is not None and halving.should_stop(run_id)),
            start=steps.resume_point(claim, device, progress),
            checkpoint_due=checkpoint_due,
            on_checkpoint=on_checkpoint,
        )
        progress.close()
    except StorageError as exc:  # its dataset could not be fetched: not the run's fault
        steps.unreachable_storage(f"run {run_id}", [progress], exc)
        return
    except Exception as exc:
        close_writer(progress)
        if progress.lost.is_set():
            log.warning("run %s ended here (%s) and is not ours any more: %s", run_id, progress.lost_reason, exc)
            return
        log.exception("run %s failed", run_id)
        if steps.record_failure(run_id, claim.token, exc):
            searches.follow([run_id])  # a failed trial is told too: the search moves on now, not at redispatch
        return
    if progress.lost.is_set():
        log.warning("run %s: %s; leaving its outcome to the worker that resumes it", run_id, progress.lost_reason)
        return
    if steps.handed_back(run_id, claim.token, progress, result):
        return
    stopped_at = halving.stopped_at(run_id) if halving is not None else None
    if steps.record_run(run_id, claim.token, functools.partial(steps.outcome, run_id, result, stopped_at)):
        log.info("run %s %s after %d epochs", run_id, result.status, len(result.points))
        searches.follow([run_id])  # a search's trial: tell it, ask the next


def _on_point(progress: ProgressWriter, halving: Halving | None, run_id: str, point: dict[str, Any]) -> None:
    progress.put_point(point)
    if halving is not None:
        halving.on_point(run_id, point)


def _due_off_rungs(halving: Halving, run_id: str, due: Callable[[int], bool], epoch: int) -> bool:
    return not halving.at_rung(run_id, epoch) and due(epoch)
