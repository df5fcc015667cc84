"""Checks on what a request's run specs name and ask for: uploaded datasets (404), quotas (429 with Retry-After)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from api.errors import ApiError
from lrlab import quotas, uploads
from lrlab.schemas.experiments import LrFinderCreate
from lrlab.schemas.spec import DatasetRef, RunSpec
from lrlab.settings import Settings


def check_datasets(session: Session, owner: str, refs: Sequence[DatasetRef], at: Sequence[str] = ("body",)) -> None:
    """Every uploaded dataset named must be the caller's own: 404 otherwise (as for any other owner's object)."""
    try:
        uploads.owned(session, owner, [ref.id for ref in refs if ref.id is not None])
    except uploads.UnknownDataset as exc:
        raise ApiError(404, [*at, "dataset", "id"], str(exc), "not_found") from exc


def check_quota(
    session: Session, owner: str, specs: list[RunSpec], settings: Settings, at: Sequence[str] = ("body",)
) -> None:
    """`at` is where the specs' fields sit in the body: ("body",) for a run, ("body", "base") for a grid.

    On success the owner's quota lock is held until the request's commit: insert the runs before it.
    """
    check_datasets(session, owner, [s.dataset for s in specs], at)
    try:
        quotas.check_runs(session, owner, specs, settings)
    except quotas.QuotaExceeded as exc:
        raise _over_quota(exc) from exc


def check_lr_finder_quota(session: Session, owner: str, request: LrFinderCreate, settings: Settings) -> None:
    """An lr-finder job counts as one active run; as check_quota, the lock is held until the commit."""
    check_datasets(session, owner, [request.dataset])
    try:
        quotas.check_active(session, owner, 1, settings)
    except quotas.QuotaExceeded as exc:
        raise _over_quota(exc) from exc


def _over_quota(exc: quotas.QuotaExceeded) -> ApiError:
    error = ApiError(429, ["body"], str(exc), "quota_exceeded")
    error.headers["Retry-After"] = str(exc.retry_after)
    return error
