"""API keys: each key is its own owner; only a key's SHA-256 is stored (keys are random, so no slow hash)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from lrlab.models import ApiKey, utcnow

KEY_PREFIX = "lrlab_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """A new key; the plain key is returned once and never stored."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(plain), prefix=plain[: len(KEY_PREFIX) + 6], created_at=utcnow())
    session.add(row)
    session.flush()
    return row, plain


def owner_of(session: Session, key: str) -> str | None:
    """The owner id of a live key, or None for an unknown or revoked one."""
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))).first()
    return row.id if row is not None else None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, id_or_name: str) -> int:
    """Revoke by id or by name; returns how many keys were revoked."""
    result = session.execute(
        update(ApiKey)
        .where(or_(ApiKey.id == id_or_name, ApiKey.name == id_or_name), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
