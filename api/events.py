"""Open event streams, and what wakes and feeds them: no pooled database connection is held while a stream waits.

Postgres: one LISTEN connection per api process; triggers on curve_point and run (migration 0005) NOTIFY
`lrlab_run` with the run id. SQLite (the embedded default): one watcher thread polls the store for the runs
being watched, twice a second. Either way the run's Feed counts the change and wakes its streams.

A Feed is what this process knows of one watched run: its status and its newest points. However many streams
watch the run, one short read (the points after the feed's last epoch, in SQL) brings it up to date after a
change, and every stream takes what it lacks from it; a stream further behind than the feed's tail (a new
stream on a long run) reads on its own once.

The hub also counts the open streams, per key and per process, against LRLAB_MAX_STREAMS_PER_KEY and
LRLAB_MAX_STREAMS_PER_PROCESS, and re-checks the keys behind them once per keep-alive interval (one query
for all of this process's streams): a revoked key's streams are told so and closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from lrlab.db import session_scope
from lrlab.models import LOCAL_OWNER, ApiKey, CurvePoint, Run
from lrlab.runs import store
from lrlab.schemas.runs import RunStatus
from lrlab.settings import get_settings

log = logging.getLogger(__name__)
CHANNEL = "lrlab_run"
READS_AT_ONCE = 4  # reads for streams use this many pooled connections at most, leaving the rest to requests
TAIL = 256  # points a feed keeps: a stream further behind reads its own
PAGE = 1000  # points a stream behind the tail reads at a time: a long curve is replayed without being held whole


def read_run(
    run_id: str, after_epoch: int, limit: int, *, newest: bool = False
) -> tuple[list[dict[str, Any]], str, bool]:
    """At most `limit` of the run's points after `after_epoch` (the first ones, or with `newest` the last ones),
    its status, and whether those are all its points after `after_epoch`; in one short session.

    Status first: once it reads finished, every point was committed before it, so the point read sees them all.
    A run deleted meanwhile reads as failed.
    """
    with session_scope() as s:
        status = s.scalar(select(Run.status).where(Run.id == run_id))
        points = store.points(s, run_id, after_epoch, limit + 1, newest=newest)
    complete = len(points) <= limit
    if not complete:
        points = points[1:] if newest else points[:limit]
    return points, status or RunStatus.failed.value, complete


@dataclass(eq=False)
class Feed:
    """What this process knows of one watched run, shared by the streams that watch it (event loop only)."""

    run_id: str
    streams: set[Stream] = field(default_factory=set)
    changes: int = 0  # changes notified so far
    read_after: int = -1  # `changes` when the newest read began: that read saw every change notified before it
    status: str = ""
    last_epoch: int = 0
    tail: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TAIL))
    reading: asyncio.Future[None] | None = None

    def covers(self, after_epoch: int) -> bool:
        """Whether the tail holds every point after `after_epoch`."""
        return after_epoch >= (self.tail[0]["epoch"] - 1 if self.tail else self.last_epoch)

    def merge(
        self, began_at: int, after_epoch: int, points: list[dict[str, Any]], status: str, complete: bool = True
    ) -> None:
        """Take a read that began when `began_at` changes were notified, if it is newer and joins the tail.

        An incomplete read holds only the newest points after `after_epoch`: the tail starts again with them.
        """
        if began_at < self.read_after or after_epoch > self.last_epoch:
            return
        if not complete:
            self.tail.clear()
        for p in points:
            if p["epoch"] > self.last_epoch:
                self.tail.append(p)
                self.last_epoch = p["epoch"]
        self.status, self.read_after = status, began_at


@dataclass(eq=False)
class Stream:
    """One open GET /v1/runs/{id}/events: woken when its run changes, or when its key is revoked."""

    feed: Feed
    owner: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    revoked: bool = False


class StreamLimit(Exception):
    def __init__(self, per: str, limit: int) -> None:
        super().__init__(f"{limit} open event streams per {per}")
        self.per, self.limit = per, limit


class EventHub:
    def __init__(self) -> None:
        settings = get_settings()
        self.max_per_key = settings.max_streams_per_key
        self.max_per_process = settings.max_streams_per_process
        self.keepalive_seconds = settings.events_keepalive_seconds
        self._check_keys = settings.auth == "required"
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self._feeds: dict[str, Feed] = {}  # by run id
        self._per_owner: Counter[str] = Counter()
        self._lock = threading.Lock()  # the watcher threads read the feeds and owners
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        url = get_settings().database_url
        watch: Callable[[str], None] = self._listen if url.startswith("postgresql") else self._poll
        threading.Thread(target=watch, args=(url,), name="lrlab-events", daemon=True).start()
        if self._check_keys:
            threading.Thread(target=self._watch_keys, name="lrlab-events-keys", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    # --- on the event loop ------------------------------------------------------------------------

    def open(self, run_id: str, owner: str) -> Stream:
        """Count a new stream in, or raise StreamLimit."""
        with self._lock:
            if self._per_owner.total() >= self.max_per_process:
                raise StreamLimit("process", self.max_per_process)
            if self._per_owner[owner] >= self.max_per_key:
                raise StreamLimit("key", self.max_per_key)
            feed = self._feeds.get(run_id) or self._feeds.setdefault(run_id, Feed(run_id))
            stream = Stream(feed, owner)
            feed.streams.add(stream)
            self._per_owner[owner] += 1
        return stream

    def close(self, stream: Stream) -> None:
        """Count a stream out (again is harmless)."""
        with self._lock:
            feed = stream.feed
            if stream not in feed.streams:
                return
            feed.streams.discard(stream)
            if not feed.streams and self._feeds.get(feed.run_id) is feed:
                del self._feeds[feed.run_id]
            self._per_owner[stream.owner] -= 1
            if not self._per_owner[stream.owner]:
                del self._per_owner[stream.owner]

    async def since(self, stream: Stream, after_epoch: int, changes: int) -> tuple[list[dict[str, Any]], str, bool]:
        """The run's points after `after_epoch` and its status, as read after the first `changes` changes, and
        whether more points follow (then the status is not final yet: ask again at once, after the last point).

        One read serves every stream of the run woken by the same change; a stream behind the tail reads alone,
        PAGE points at a time.
        """
        feed = stream.feed
        while feed.read_after < changes:
            if feed.reading is None:
                feed.reading = asyncio.ensure_future(self._refresh(feed))
                feed.reading.add_done_callback(lambda f: f.cancelled() or f.exception())  # read by its waiters
            await asyncio.shield(feed.reading)
        if feed.covers(after_epoch):
            return [p for p in feed.tail if p["epoch"] > after_epoch], feed.status, False
        began_at = feed.changes
        points, status, complete = await self._read(feed.run_id, after_epoch, PAGE)
        if complete:
            feed.merge(began_at, after_epoch, points, status)
        return points, status, not complete

    async def _refresh(self, feed: Feed) -> None:
        """Bring the feed up to date: its status and at most the newest TAIL points (not a long curve whole)."""
        began_at, after_epoch = feed.changes, feed.last_epoch
        try:
            points, status, complete = await self._read(feed.run_id, after_epoch, TAIL, newest=True)
            feed.merge(began_at, after_epoch, points, status, complete)
        finally:
            feed.reading = None

    async def _read(
        self, run_id: str, after_epoch: int, limit: int, *, newest: bool = False
    ) -> tuple[list[dict[str, Any]], str, bool]:
        async with self._reads:
            return await run_in_threadpool(read_run, run_id, after_epoch, limit, newest=newest)

    def _changed(self, run_id: str) -> None:
        feed = self._feeds.get(run_id)
        if feed is not None:
            feed.changes += 1
            for stream in feed.streams:
                stream.wake.set()

    def _end(self, streams: list[Stream]) -> None:
        for stream in streams:
            stream.revoked = True
            stream.wake.set()

    # --- from the watcher threads -----------------------------------------------------------------

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    def _listen(self, url: str) -> None:
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._lock:  # whatever changed while no one listened is read now
                        watched = list(self._feeds)
                    for run_id in watched:
                        self._call(self._changed, run_id)
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._call(self._changed, note.payload)
            except Exception:
                log.warning("event listener lost its connection; reconnecting", exc_info=True)
                self._stop.wait(1.0)

    def _poll(self, url: str) -> None:
        seen: dict[str, tuple[int, str]] = {}
        while not self._stop.wait(0.5):
            with self._lock:
                watched = list(self._feeds)
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
                    self._call(self._changed, run_id)

    def _watch_keys(self) -> None:
        """Once per keep-alive interval: one query for the keys behind every open stream; revoked ones close."""
        while not self._stop.wait(self.keepalive_seconds):
            with self._lock:
                owners = set(self._per_owner) - {LOCAL_OWNER}
            if not owners:
                continue
            try:
                with session_scope() as s:
                    live = set(s.scalars(select(ApiKey.id).where(ApiKey.id.in_(owners), ApiKey.revoked_at.is_(None))))
            except SQLAlchemyError:
                log.warning("could not re-check the keys of open event streams", exc_info=True)
                continue
            if gone := owners - live:
                self.revoke(gone)

    def revoke(self, owners: set[str]) -> None:
        """End the streams of these owners: each sends one `error` event and closes."""
        with self._lock:
            streams = [s for feed in self._feeds.values() for s in feed.streams if s.owner in owners]
        self._call(self._end, streams)
