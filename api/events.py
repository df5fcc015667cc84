"""Wakes server-sent-event streams when their run changes, with no database poll per client.

Postgres: one LISTEN connection per api process; triggers on curve_point and run (migration 0005) NOTIFY
`lrlab_run` with the run id. SQLite (the embedded default): one watcher thread polls the store for the runs
being watched, twice a second, and wakes their clients.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict

import psycopg
from sqlalchemy import func, select

from lrlab.db import session_scope
from lrlab.models import CurvePoint, Run
from lrlab.settings import get_settings

log = logging.getLogger(__name__)
CHANNEL = "lrlab_run"


class EventHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        url = get_settings().database_url
        target = self._listen if url.startswith("postgresql") else self._poll
        self._thread = threading.Thread(target=target, args=(url,), name="lrlab-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def subscribe(self, run_id: str) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters[run_id].add(event)
        return event

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters[run_id].discard(event)
            if not self._waiters[run_id]:
                del self._waiters[run_id]

    def _wake(self, run_id: str) -> None:
        with self._lock:
            events = list(self._waiters.get(run_id, ()))
        if events and self._loop is not None:
            for event in events:
                self._loop.call_soon_threadsafe(event.set)

    def _listen(self, url: str) -> None:
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._wake(note.payload)
            except Exception:
                log.warning("event listener lost its connection; reconnecting", exc_info=True)
                self._stop.wait(1.0)

    def _poll(self, url: str) -> None:
        seen: dict[str, tuple[int, str]] = {}
        while not self._stop.wait(0.5):
            with self._lock:
                watched = list(self._waiters)
            if not watched:
                continue
            try:
                with session_scope() as s:
                    counts = dict(
                        s.execute(
                            select(CurvePoint.run_id, func.count())
                            .where(CurvePoint.run_id.in_(watched))
                            .group_by(CurvePoint.run_id)
                        ).all()
                    )
                    statuses = dict(s.execute(select(Run.id, Run.status).where(Run.id.in_(watched))).all())
            except Exception:
                log.warning("event watcher could not read the store", exc_info=True)
                continue
            for run_id in watched:
                state = (counts.get(run_id, 0), statuses.get(run_id, ""))
                if seen.get(run_id) != state:
                    seen[run_id] = state
                    self._wake(run_id)
