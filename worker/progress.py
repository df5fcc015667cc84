"""Writes runs' epoch points from a background thread, so training never waits on the database.

One writer thread per worker process (the hub) serves every run training in it: a run's ProgressWriter only
queues its points and actions, and the hub commits what is due for all of them in one transaction (upserts
keyed by run and epoch, after renewing and reading every lease in one statement), on one connection. So a
fused pack's members are written together, and a process carrying a thousand runs uses one connection and a
few transactions a second rather than a thread, a held connection and two transactions a second per run
(bench/many_writers.py). A run's points are committed at least `flush_seconds` apart: an epoch longer than that
is committed as it ends, epochs of a few milliseconds in groups. The training thread wakes the hub only when a
run has something due: waking it every epoch cost the training thread ~1.5% in GIL hand-offs
(docs/benchmarks.md).

With a lease token, every transaction that writes for a run locks the run's row and checks that it still carries
that token and is running (the lock orders us against a reconciler requeueing the run), and renews the lease
when a sixth of it is gone. If the row does not carry the token any more (the lease expired and the run was
requeued, perhaps already claimed by another worker) nothing is written for the run, `lost` is set and every
later write is dropped: the run belongs to someone else now. Each transaction also reads the runs' cancel flags;
a run with nothing to write is still visited every `poll_seconds`, so a long epoch ends on a cancel. The writer
also gives a run up (`lost`) when the database stays away longer than `retry_seconds`; the lease then lapses
and the run is requeued and resumed from its checkpoint, rather than failed. An action (a checkpoint) that
raises fails its own run only (it runs under a savepoint); the others in the transaction are written.

When the worker shuts down (`shutting_down`, set on Celery's warm shutdown), a run is handed back rather than
left to its lease: the trainer stops at the end of its epoch with a checkpoint of that epoch (`shutdown_due`)
and the task releases the run (lrlab.runs.leases.release_run), queued again at once. A writer whose trainer has
not reached the end of its epoch `HAND_BACK_SECONDS` later is released where it stands by `hand_back_held`
(its epochs since the last checkpoint are trained again by the next worker, each stored once).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.exc import DBAPIError, OperationalError

from lrlab.db import get_engine
from lrlab.models import UTCDateTime, utcnow
from lrlab.runs import leases
from lrlab.runs.store import UPSERT_POINT, point_row
from lrlab.schemas import RunStatus

log = logging.getLogger(__name__)

# Set once, when the worker process begins a warm shutdown (worker/app.py); never cleared.
shutting_down = threading.Event()
# How long after the shutdown began a run still training is released without waiting for its epoch to end:
# `lrlab up` gives its worker 8 s before it kills it, docker compose 10 s.
HAND_BACK_SECONDS = 5.0
_held: set[ProgressWriter] = set()  # writers under a lease whose trainer has not returned yet
_held_lock = threading.Lock()
RENEW_FRACTION = 1 / 6  # a lease is renewed once this much of it has run


class ProgressWriter:
    """One run's points and actions, written by its process's hub (see the module docstring)."""

    def __init__(
        self,
        run_id: str,
        *,
        lease_token: str | None = None,
        lease_seconds: float = 30.0,
        flush_seconds: float = 0.5,
        poll_seconds: float = 0.5,
        retry_seconds: float = 60.0,
    ) -> None:
        self.run_id = run_id
        self._token = lease_token
        self._lease_seconds = lease_seconds
        self._flush_seconds = flush_seconds
        self._poll_seconds = poll_seconds
        self._retry_seconds = retry_seconds
        self.cancel_requested = threading.Event()
        # The worker is shutting down: stop after this epoch (checkpointed) and give the run back.
        self.hand_back = threading.Event()
        # This worker must write nothing more for the run, its outcome included (see the module docstring).
        self.lost = threading.Event()
        self.lost_reason = ""
        self._error: BaseException | None = None
        # Guarded by the hub's lock:
        self._items: list[tuple[str, Any]] = []
        self._last_write = 0.0  # when a transaction last wrote for this run (monotonic): a first point goes at once
        # An idle run is first visited poll_seconds after it starts, not at once: a pack's members would each
        # cost a transaction as training starts.
        self._started = time.monotonic()
        self._renewed_at = time.monotonic()  # the claim that gave us the token renewed the lease
        self._failing_since: float | None = None
        self._closing = False
        self._closed = threading.Event()
        self._hub = _hub()
        self._hub.add(self)
        if lease_token is not None:
            with _held_lock:
                _held.add(self)

    @property
    def connection(self) -> Connection | None:
        """The connection this run's writes go through (its process's hub's), None before the first write."""
        return self._hub.conn

    def should_stop(self) -> bool:
        """For the trainer: stop after this epoch, because a person asked, the run is not ours, or the worker is
        shutting down and this epoch's checkpoint was taken (`shutdown_due`)."""
        return self.cancel_requested.is_set() or self.lost.is_set() or self.hand_back.is_set()

    def shutdown_due(self) -> bool:
        """For the trainer's checkpoint_due: True from the first epoch end after the worker began to shut down.

        It latches `hand_back`, which should_stop then reads: the trainer asks checkpoint_due before should_stop,
        so it stops at an epoch whose checkpoint it has just handed over, and no epoch is trained twice.
        """
        if shutting_down.is_set():
            self.hand_back.set()
        return self.hand_back.is_set()

    def put_point(self, point: dict[str, Any]) -> None:
        self._put("point", point)

    def put_action(self, action: Callable[[Any], None]) -> None:
        """Run `action(connection)` in a coming transaction of the writer (e.g. save a checkpoint); never if lost."""
        self._put("action", action)

    def _put(self, kind: str, item: Any) -> None:
        self._raise_if_failed()
        if not self.lost.is_set():
            self._hub.put(self, (kind, item))

    def close(self) -> None:
        """Flush everything pending; re-raise a write that failed for good (a lost run is not an error: see `lost`)."""
        close_all([self])
        self._raise_if_failed()

    def _due(self, now: float) -> bool:
        if self._closing:
            return True
        return now >= self._next_due()

    def _next_due(self) -> float:
        if self._items:
            return self._last_write + self._flush_seconds
        return max(self._last_write, self._started) + self._poll_seconds

    def _give_up(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        log.warning("run %s: %s; this worker writes nothing more for it", self.run_id, reason)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"could not record progress of run {self.run_id}") from self._error


def close_all(writers: Sequence[ProgressWriter]) -> None:
    """Flush what every one of these writers has pending, in one transaction where they share a hub, and retire
    them. Never raises for a failed write (ProgressWriter.close does, for its own)."""
    with _held_lock:  # the trainer has returned: from here on the task's own path hands the run back
        for w in writers:
            _held.discard(w)
    hubs = {id(w._hub): w._hub for w in writers}
    for hub in hubs.values():
        hub.close([w for w in writers if w._hub is hub])
    for w in writers:
        w._closed.wait()


# --- the hub: one writer thread per process -------------------------------------------------------------------

# FOR NO KEY UPDATE: the lock an UPDATE of the lease takes. It orders us against the reconciler's requeue (its
# FOR UPDATE waits for it) but not against a foreign-key check: another transaction inserting one of the run's
# points or its checkpoint holds a KEY SHARE lock on the row, which FOR UPDATE would wait for.
RUNS_FOR_UPDATE = text(
    "SELECT id, lease_token, status, cancel_requested FROM run WHERE id IN :ids ORDER BY id FOR NO KEY UPDATE"
).bindparams(bindparam("ids", expanding=True))
RUNS_FOR_UPDATE_SQLITE = text(  # SQLite has no row locks: a write transaction holds the whole database
    "SELECT id, lease_token, status, cancel_requested FROM run WHERE id IN :ids"
).bindparams(bindparam("ids", expanding=True))
CANCELS = text("SELECT id, cancel_requested FROM run WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
RENEW = text("UPDATE run SET lease_expires_at = :expires WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True), bindparam("expires", type_=UTCDateTime())
)


class _Hub:
    """The process's writer thread and the writers it serves."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.writers: set[ProgressWriter] = set()
        self.conn: Connection | None = None
        self.delay = 0.2  # backoff while the database is away
        self.thread = threading.Thread(target=self._loop, name="progress-writer", daemon=True)
        self.thread.start()

    def add(self, writer: ProgressWriter) -> None:
        with self.cond:
            self.writers.add(writer)
            self.cond.notify()  # its due times join the hub's wait

    def put(self, writer: ProgressWriter, item: tuple[str, Any]) -> None:
        with self.cond:
            writer._items.append(item)
            if writer._due(time.monotonic()):  # only then: a wake per epoch would cost the training thread
                self.cond.notify()

    def close(self, writers: Iterable[ProgressWriter]) -> None:
        with self.cond:
            for w in writers:
                w._closing = True
            self.cond.notify()

    def _take(self) -> list[tuple[ProgressWriter, list[tuple[str, Any]]]]:
        """Wait for writers with something due; take every writer's pending items (one transaction for all)."""
        with self.cond:
            while True:
                now = time.monotonic()
                if any(w._due(now) for w in self.writers):
                    break
                timeout = min((w._next_due() for w in self.writers), default=now + 3600.0) - now
                self.cond.wait(max(timeout, 0.001))
            batch = []
            for w in list(self.writers):
                if w._items or w._due(now):
                    batch.append((w, w._items))
                    w._items = []
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            try:
                self._write(batch)
            except BaseException:  # never let the thread die: every writer of the batch is failed instead
                log.exception("progress writer failed")
                for w, _ in batch:
                    w._error = w._error or RuntimeError("the progress writer failed")
            self._retire(batch)

    def _retire(self, batch: list[tuple[ProgressWriter, list[tuple[str, Any]]]]) -> None:
        """Close the closing writers that have nothing left to write (or never will)."""
        with self.cond:
            for w, _ in batch:
                if w._closing and (not w._items or w._error is not None or w.lost.is_set()):
                    self.writers.discard(w)
                    w._items = []
                    w._closed.set()

    def _write(self, batch: list[tuple[ProgressWriter, list[tuple[str, Any]]]]) -> None:
        live = [(w, items) for w, items in batch if w._error is None and not w.lost.is_set()]
        rows, ready = [], []
        for w, items in live:  # a point that cannot be stored fails its own run, before any transaction
            try:
                rows.append([point_row(w.run_id, p) for kind, p in items if kind == "point"])
                ready.append((w, items))
            except Exception as exc:
                w._error = exc
        if not ready:
            return
        try:
            self._transaction(ready, rows)
        except OperationalError as exc:  # the database is briefly away: the writes are idempotent, retry
            self._drop_connection()
            self._requeue(ready, exc)
            return
        except DBAPIError:  # one run's rows the database refuses (its run deleted, ...): each alone, to find it
            self._drop_connection()
            if len(ready) == 1:
                raise
            for one, one_rows in zip(ready, rows, strict=True):
                try:
                    self._transaction([one], [one_rows])
                except OperationalError as exc:
                    self._drop_connection()
                    self._requeue([one], exc)
                except BaseException as exc:
                    self._drop_connection()
                    one[0]._error = exc
            return
        self.delay = 0.2

    def _transaction(self, ready: list[tuple[ProgressWriter, list[tuple[str, Any]]]], rows: list[list[Any]]) -> None:
        if self.conn is None:
            self.conn = get_engine().connect()
        conn = self.conn
        now = time.monotonic()
        with conn.begin():
            held, cancels = self._leases(conn, [w for w, _ in ready], now)
            upserts = [r for (w, _), rs in zip(ready, rows, strict=True) if w in held for r in rs]
            if upserts:
                conn.execute(UPSERT_POINT, upserts)
            for w, items in ready:
                actions = [a for kind, a in items if kind == "action"]
                if w not in held or not actions:
                    continue
                try:
                    with conn.begin_nested():
                        for action in actions:
                            action(conn)
                except OperationalError:
                    raise
                except BaseException as exc:  # rolled back to the savepoint: this run alone fails
                    w._error = exc
        for w, _ in ready:
            if w in held:
                w._last_write, w._failing_since = now, None
                if w.run_id in cancels:
                    w.cancel_requested.set()

    def _leases(
        self, conn: Connection, writers: list[ProgressWriter], now: float
    ) -> tuple[set[ProgressWriter], set[str]]:
        """Lock and check the leased runs' rows (renewing the leases due), read every run's cancel flag: the
        writers whose runs are still theirs, and the runs whose cancel was asked for."""
        leased = [w for w in writers if w._token is not None]
        held = {w for w in writers if w._token is None}
        cancels: set[str] = set()
        if held:
            cancels |= {r[0] for r in conn.execute(CANCELS, {"ids": sorted({w.run_id for w in held})}) if r[1]}
        if not leased:
            return held, cancels
        query = RUNS_FOR_UPDATE if conn.dialect.name == "postgresql" else RUNS_FOR_UPDATE_SQLITE
        rows = {r[0]: r for r in conn.execute(query, {"ids": sorted({w.run_id for w in leased})})}
        renew = []
        for w in leased:
            row = rows.get(w.run_id)
            if row is None or row[1] != w._token or row[2] != RunStatus.running.value:
                w._give_up("lease lost (the run was requeued or another worker holds it)")
                continue
            held.add(w)
            if row[3]:
                cancels.add(w.run_id)
            if now - w._renewed_at >= w._lease_seconds * RENEW_FRACTION:
                renew.append(w)
        for seconds in {w._lease_seconds for w in renew}:
            same = [w for w in renew if w._lease_seconds == seconds]
            expires = utcnow() + timedelta(seconds=seconds)
            conn.execute(RENEW, {"ids": [w.run_id for w in same], "expires": expires})
            for w in same:
                w._renewed_at = now
        return held, cancels

    def _requeue(self, ready: list[tuple[ProgressWriter, list[tuple[str, Any]]]], exc: Exception) -> None:
        """Put the items back for another try, or give a run up once the database has been away too long."""
        now = time.monotonic()
        with self.cond:
            for w, items in ready:
                w._failing_since = w._failing_since if w._failing_since is not None else now
                if now - w._failing_since >= w._retry_seconds:
                    if w._token is not None:
                        w._give_up(f"database unreachable for {w._retry_seconds:.0f}s ({exc})")
                    else:
                        w._error = exc
                    continue
                w._items = items + w._items
        log.warning("progress write failed, retrying in %.1fs: %s", self.delay, exc)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 5.0)

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
            self.conn = None


_hubs: dict[int, _Hub] = {}
_hubs_lock = threading.Lock()


def _hub() -> _Hub:
    """This process's hub (a forked child starts its own: threads do not survive a fork)."""
    pid = os.getpid()
    with _hubs_lock:
        hub = _hubs.get(pid)
        if hub is None:
            hub = _hubs[pid] = _Hub()
        return hub


# --- shutdown ---------------------------------------------------------------------------------------------------


def hand_back_held() -> list[str]:
    """Release every run whose trainer is still inside an epoch (the shutdown's grace has run out); their writers
    write nothing more. Returns the run ids released."""
    released = []
    with _held_lock:  # a close() waits: its flush then finds the lease gone and writes nothing
        for writer in list(_held):
            _held.discard(writer)
            writer._give_up("handed back mid-epoch: the worker is shutting down")
            if writer._token is not None and leases.release_run(writer.run_id, writer._token):
                released.append(writer.run_id)
    return released


def hand_back_on_shutdown() -> None:
    """A worker process's watchdog thread: HAND_BACK_SECONDS after the shutdown began, release what still trains."""
    shutting_down.wait()
    time.sleep(HAND_BACK_SECONDS)
    try:
        released = hand_back_held()
    except Exception:  # the database is away: the leases lapse and the reconciler requeues the runs
        log.warning("could not hand back the runs still training", exc_info=True)
        return
    if released:
        log.warning("handed back mid-epoch (the worker is shutting down): %s", ", ".join(released))


def close_writer(writer: ProgressWriter) -> bool:
    """Close the writer; False (logged) when some of its progress could not be recorded."""
    return close_writers([writer])[0]


def close_writers(writers: Sequence[ProgressWriter]) -> list[bool]:
    """Close these writers together (their last points in one transaction); per writer, False (logged) when some
    of its progress could not be recorded."""
    close_all(writers)
    out = []
    for writer in writers:
        try:
            writer._raise_if_failed()
            out.append(True)
        except RuntimeError:
            log.warning("progress of run %s was not fully recorded", writer.run_id, exc_info=True)
            out.append(False)
    return out
