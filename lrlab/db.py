"""Engine and sessions; SQLite (the embedded default) gets WAL and a busy timeout so api and worker share it."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from lrlab.settings import get_settings


@functools.cache
def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A fused pack holds one connection per member's progress writer (up to MAX_PACK_MEMBERS).
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=30)


@functools.cache
def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error."""
    with get_sessionmaker()() as session, session.begin():
        yield session


def reset_caches() -> None:
    """Forget engines and settings (tests point the settings at a new database)."""
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    get_settings.cache_clear()
