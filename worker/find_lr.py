"""One lr range test on a worker: claim the job, sweep, store the points and the suggestion.

A job has no lease (a sweep takes seconds); if its worker dies, the reconciler requeues it once that
worker's heartbeat is stale. The result is written only while the job is still running here, so a
worker presumed dead that comes back cannot overwrite the outcome of the attempt that replaced it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy import update

import trainer
from lrlab.db import session_scope
from lrlab.models import LrFinder, utcnow
from lrlab.schemas import RunStatus
from lrlab.schemas.experiments import LrFinderCreate
from lrlab.settings import get_settings
from worker.datasets import materialize

log = logging.getLogger(__name__)


def execute_lr_finder(job_id: str, worker: str) -> None:
    with session_scope() as session:
        moved = session.execute(
            update(LrFinder)
            .where(LrFinder.id == job_id, LrFinder.status == RunStatus.queued.value)
            .values(status=RunStatus.running.value, started_at=utcnow(), worker=worker)
        ).rowcount  # type: ignore[attr-defined]
        job = session.get(LrFinder, job_id) if moved else None
        spec = dict(job.spec) if job is not None else None
    if spec is None:
        log.info("lr-finder job %s is not queued any more; skipping", job_id)
        return
    values: dict[str, Any]
    try:
        request = LrFinderCreate.model_validate(spec)
        result = trainer.lr_range_test(
            trainer.RunConfig.from_spec(materialize(request.run_spec())),
            min_lr=request.min_lr,
            max_lr=request.max_lr,
            steps=request.steps,
            smoothing=request.smoothing,
            stop_factor=request.stop_factor,
            device=trainer.resolve_device(request.device),
            data_root=get_settings().dataset_root,
        )
    except Exception as exc:
        log.exception("lr-finder job %s failed", job_id)
        values = {"status": RunStatus.failed.value, "error": f"{type(exc).__name__}: {exc}"[:4000]}
    else:
        values = {"status": RunStatus.succeeded.value, "result": asdict(result)}
    with session_scope() as session:
        recorded = session.execute(
            update(LrFinder)
            .where(LrFinder.id == job_id, LrFinder.status == RunStatus.running.value, LrFinder.worker == worker)
            .values(finished_at=utcnow(), **values)
        ).rowcount  # type: ignore[attr-defined]
    if not recorded:
        log.warning("lr-finder job %s was requeued meanwhile; its result here is dropped", job_id)
