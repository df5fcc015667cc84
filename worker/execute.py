"""One run's lifecycle on a worker: claim it, train it, persist each epoch as it ends, record the outcome."""

from __future__ import annotations

import logging
import traceback
from dataclasses import asdict

from sqlalchemy import update

import trainer
from lrlab.analysis import summarize
from lrlab.db import session_scope
from lrlab.models import Run, utcnow
from lrlab.schemas import RunStatus
from lrlab.settings import get_settings
from lrlab.store import points
from worker.progress import ProgressWriter

log = logging.getLogger(__name__)

OUTCOME = {"succeeded": RunStatus.succeeded, "diverged": RunStatus.diverged, "stopped": RunStatus.cancelled}


def _claim(run_id: str, worker: str) -> dict | None:
    """queued -> running, atomically; None when the run is gone, finished or cancelled meanwhile."""
    with session_scope() as session:
        moved = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == RunStatus.queued.value)
            .values(status=RunStatus.running.value, started_at=utcnow(), worker=worker, attempts=Run.attempts + 1)
        ).rowcount  # type: ignore[attr-defined]
        if not moved:
            return None
        run = session.get(Run, run_id)
        assert run is not None
        return dict(run.spec)


def _finish(run_id: str, **values: object) -> None:
    with session_scope() as session:
        session.execute(update(Run).where(Run.id == run_id).values(finished_at=utcnow(), **values))


def _set_threads() -> None:
    # Several prefork children on one machine must share its cores rather than each take them all.
    share = get_settings().torch_threads
    if share > 0:
        import torch

        torch.set_num_threads(share)


def execute_run(run_id: str, worker: str) -> None:
    spec = _claim(run_id, worker)
    if spec is None:
        log.info("run %s is not queued any more; skipping", run_id)
        return
    _set_threads()
    progress = ProgressWriter(run_id, flush_seconds=get_settings().progress_flush_seconds)
    try:
        config = trainer.RunConfig.from_spec(spec)
        device = trainer.resolve_device(spec.get("device", "auto"))
        with session_scope() as session:
            session.execute(update(Run).where(Run.id == run_id).values(device=str(device)))
        result = trainer.train(
            config,
            device=device,
            data_root=get_settings().dataset_root,
            on_epoch=lambda point: progress.put_point(asdict(point)),
            should_stop=progress.cancel_requested.is_set,
        )
        progress.close()
    except Exception as exc:
        try:
            progress.close()
        except RuntimeError:
            log.warning("progress of run %s was not fully recorded", run_id, exc_info=True)
        log.exception("run %s failed", run_id)
        _finish(run_id, status=RunStatus.failed.value, error=f"{type(exc).__name__}: {exc}"[:4000])
        log.debug("%s", traceback.format_exc())
        return
    with session_scope() as session:
        summary = summarize(
            points(session, run_id),
            diverged_at=result.diverged_at,
            reason=result.reason,
            early_stopped=result.early_stopped,
        )
    _finish(
        run_id,
        status=OUTCOME[result.status].value,
        summary=summary.model_dump(mode="json"),
        n_parameters=result.n_parameters,
    )
    log.info("run %s %s after %d epochs", run_id, result.status, len(result.points))
