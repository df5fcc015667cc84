"""Idempotency-Key on POSTs: the same key and body replay the first response; another body is a conflict."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lrlab.models import IdempotencyRecord, utcnow


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()


def lookup(session: Session, owner: str, key: str, ttl_hours: float) -> IdempotencyRecord | None:
    fresh = utcnow() - timedelta(hours=ttl_hours)
    return session.scalars(
        select(IdempotencyRecord).where(
            IdempotencyRecord.owner == owner, IdempotencyRecord.key == key, IdempotencyRecord.created_at >= fresh
        )
    ).first()


def remember(
    session: Session,
    owner: str,
    key: str,
    fingerprint: str,
    status_code: int,
    body: dict[str, Any],
    location: str | None,
    ttl_hours: float,
) -> None:
    """Record the response in the transaction that made it: both commit, or neither does."""
    expired = utcnow() - timedelta(hours=ttl_hours)
    # Forget this owner's expired keys (the same key, used again after a day, starts afresh). A live record
    # made meanwhile by a concurrent request is left alone: the unique (owner, key) then fails our commit.
    session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.owner == owner, IdempotencyRecord.created_at < expired)
    )
    session.add(
        IdempotencyRecord(
            owner=owner,
            key=key,
            fingerprint=fingerprint,
            status_code=status_code,
            body=body,
            location=location,
            created_at=utcnow(),
        )
    )
