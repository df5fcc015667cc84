"""Quota checks as HTTP errors: 429 with Retry-After, naming the limit."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import ApiError
from lrlab import quotas
from lrlab.schemas.spec import RunSpec
from lrlab.settings import Settings


def check_quota(session: Session, owner: str, specs: list[RunSpec], settings: Settings) -> None:
    try:
        quotas.check_runs(session, owner, specs, settings)
    except quotas.QuotaExceeded as exc:
        error = ApiError(429, ["body"], str(exc), "quota_exceeded")
        error.headers["Retry-After"] = str(exc.retry_after)
        raise error from exc
