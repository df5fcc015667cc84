"""Engine and sessions; SQLite (the embedded default) gets WAL and a busy timeout so api and worker share it."""

from __future__ import annotations

import functools
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from lrlab.settings import get_settings


def finite(value: Any) -> Any:
    """`value` with every NaN and infinity (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps_json(value: Any) -> str:
    """What every JSON column is written with: a NaN or infinity becomes null, wherever it sits.

    json.dumps would write the tokens NaN and Infinity, which are not JSON: Postgres refuses the row (and a
    worker recording a result would fail on every delivery), SQLite keeps it and the API can't render it.
    """
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # the rare value holding one: clean it (a copy) only then
        return json.dumps(finite(value), allow_nan=False)


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for `url` (default: the settings'): one pool, whichever way it is asked for."""
    url = url or get_settings().database_url
    with _engine_lock:  # threads asking first at the same moment must not each build a pool
        return _engine(url)


_engine_lock = threading.Lock()


@functools.cache
def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, json_serializer=dumps_json
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A worker process writes every run's progress through one connection (worker/progress.py); the overflow
    # serves bursts of API requests.
    # An exhausted pool raises sqlalchemy.exc.TimeoutError after pool_timeout: the API answers 503 (api/errors.py).
    settings = get_settings()
    return create_engine(
        url,
        connect_args=_keepalives(settings.db_keepalive_seconds),
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        json_serializer=dumps_json,
    )


def _keepalives(seconds: int) -> dict[str, Any]:
    """TCP keepalives on both ends of each connection.

    The server's (options -c, per session): a host cut off in the middle of a transaction would otherwise keep
    that transaction open, with its row locks, until the server's kernel gives up on the peer (hours with
    Linux's defaults), and the reconciler skips locked rows. The client's: a query to a vanished server fails
    instead of waiting.
    """
    if seconds <= 0:
        return {}
    probes = f"-c tcp_keepalives_idle={seconds} -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
    return {
        "options": probes,
        "keepalives": 1,
        "keepalives_idle": seconds,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


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
    _engine.cache_clear()
    get_sessionmaker.cache_clear()
    get_settings.cache_clear()
