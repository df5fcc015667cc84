"""Learning-rate range test jobs: create, read and list them (the sweep itself runs on a worker)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from lrlab.models import LrFinder, utcnow
from lrlab.queue import choose_queue
from lrlab.schemas.experiments import LrFinderCreate, LrFinderPublic
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


def to_public(job: LrFinder) -> LrFinderPublic:
    result: dict[str, Any] = job.result or {}
    return LrFinderPublic.model_validate(
        {
            "id": job.id,
            "status": job.status,
            "spec": job.spec,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "error": job.error,
            **result,
        }
    )
