"""Learning-rate range test jobs: create, read, list and cancel them (the sweep itself runs on a worker)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.orm import Session

from lrlab.broker import choose_queue
from lrlab.models import LrFinder, utcnow
from lrlab.schemas.experiments import MIN_SWEEP_LR, LrFinderCreate, LrFinderPublic
from lrlab.schemas.runs import RunStatus


def create_job(session: Session, request: LrFinderCreate, *, owner: str) -> LrFinder:
    job = LrFinder(
        owner=owner,
        status=RunStatus.queued.value,
        spec=request.model_dump(mode="json"),
        queue=choose_queue(session, request.device),
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def stored_request(spec: dict[str, Any]) -> LrFinderCreate:
    """A job's request as stored. One made before min_lr had its lower bound (a worker fails it, saying why)
    is still shown as it was asked for, not refused: the bound is waived for it, nothing else is."""
    try:
        return LrFinderCreate.model_validate(spec)
    except ValidationError:
        min_lr = spec.get("min_lr")
        if not isinstance(min_lr, float) or not 0 < min_lr < MIN_SWEEP_LR:
            raise
        return LrFinderCreate.model_validate({**spec, "min_lr": MIN_SWEEP_LR}).model_copy(update={"min_lr": min_lr})


def to_public(job: LrFinder) -> LrFinderPublic:
    result: dict[str, Any] = job.result or {}
    return LrFinderPublic.model_validate(
        {
            "id": job.id,
            "status": job.status,
            "spec": stored_request(job.spec),
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "error": job.error,
            "cancel_requested": job.cancel_requested,
            **result,
        }
    )


def request_cancel(session: Session, job: LrFinder) -> None:
    """Queued: cancelled at once (a worker that later receives it skips it). Running: its worker stops the
    sweep within a few steps and records it cancelled, with the points it has."""
    if job.status == RunStatus.queued.value:
        session.execute(
            update(LrFinder)
            .where(LrFinder.id == job.id, LrFinder.status == RunStatus.queued.value)
            .values(status=RunStatus.cancelled.value, finished_at=utcnow(), cancel_requested=True)
        )
        session.refresh(job)  # cancelled, or claimed by a worker meanwhile
    if job.status == RunStatus.running.value:
        job.cancel_requested = True
