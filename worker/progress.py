"""Writes a run's epoch points from a background thread, so training never waits on the database.

The trainer hands each point over as its epoch ends; the writer commits everything pending in one
transaction (upserts keyed by run and epoch) and reads the run's cancel flag in the same round trip.
Commits are at least `flush_seconds` apart: an epoch longer than that is committed as it ends, while
epochs of a few milliseconds are committed in groups (a database round trip per short epoch, and the GIL
hand-offs it causes, slow the training thread measurably: docs/benchmarks.md has the figures).

With a lease token, every transaction (idle ones every `poll_seconds` included) opens by renewing the
run's lease where the row still carries that token. If it does not (the lease expired and the run was
requeued, perhaps already claimed by another worker) the transaction writes nothing, `lost` is set and
every later write is dropped: the run belongs to someone else now. A write that meets a database outage is
retried (worker/retry.py, the worker's one policy); the writer gives the run up (`lost`) when the database
stays away longer than `retry_seconds`: the lease then lapses and the run is requeued and resumed from its
checkpoint, rather than failed.

When the worker shuts down (`shutting_down`, set on Celery's warm shutdown), a run is handed back rather than
left to its lease: the trainer stops at the end of its epoch with a checkpoint of that epoch (`shutdown_due`)
and the task releases the run (lrlab.runs.leases.release_run), queued again at once. A writer whose trainer has
not reached the end of its epoch `HAND_BACK_SECONDS` later is released where it stands by `hand_back_held`
(its epochs since the last checkpoint are trained again by the next worker, each stored once).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from lrlab.db import get_engine
from lrlab.runs import leases
from lrlab.runs.leases import renew_lease
from lrlab.runs.store import cancel_requested, upsert_points
from worker.retry import through_outages

log = logging.getLogger(__name__)

_CLOSE = object()

# Set once, when the worker process begins a warm shutdown (worker/app.py); never cleared.
shutting_down = threading.Event()
# How long after the shutdown began a run still training is released without waiting for its epoch to end:
# `lrlab up` gives its worker 8 s before it kills it, docker compose 10 s.
HAND_BACK_SECONDS = 5.0
_held: set[ProgressWriter] = set()  # writers under a lease whose trainer has not returned yet
_held_lock = threading.Lock()


class _LeaseLost(Exception):
    """Raised inside the transaction to roll it back: the run no longer carries our token."""


class ProgressWriter:
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
        self._last_write = 0.0
        self.cancel_requested = threading.Event()
        # The worker is shutting down: stop after this epoch (checkpointed) and give the run back.
        self.hand_back = threading.Event()
        # This worker must write nothing more for the run, its outcome included (see the module docstring).
        self.lost = threading.Event()
        self.lost_reason = ""
        self._retry_seconds = retry_seconds
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._conn: Connection | None = None  # held for the run: one checkout, not one per epoch
        self._thread = threading.Thread(target=self._loop, name=f"progress-{run_id[:8]}", daemon=True)
        self._thread.start()
        if lease_token is not None:
            with _held_lock:
                _held.add(self)

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
        self._raise_if_failed()
        if not self.lost.is_set():
            self._queue.put(("point", point))

    def put_action(self, action: Callable[[Any], None]) -> None:
        """Run `action(connection)` in the writer's next transaction (e.g. save a checkpoint); never if lost."""
        self._raise_if_failed()
        if not self.lost.is_set():
            self._queue.put(("action", action))

    def close(self) -> None:
        """Flush everything pending; re-raise a write that failed for good (a lost run is not an error: see `lost`)."""
        with _held_lock:  # the trainer has returned: from here on the task's own path hands the run back
            _held.discard(self)
        self._queue.put(_CLOSE)
        self._thread.join()
        self._raise_if_failed()

    def _give_up(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        log.warning("run %s: %s; this worker writes nothing more for it", self.run_id, reason)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"could not record progress of run {self.run_id}") from self._error

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing a broken connection failed", exc_info=True)
            self._conn = None

    def _loop(self) -> None:
        closing = False
        while not closing:
            try:
                batch = [self._queue.get(timeout=self._poll_seconds)]
            except queue.Empty:
                # nothing to write: still look for a cancel, so a long epoch ends on the request
                batch = []
                if self._error is None and not self.lost.is_set():
                    self._write([])
                continue
            if batch[0] is not _CLOSE:
                # wait out the flush interval (unless asked to close), gathering what arrives meanwhile
                wait = self._last_write + self._flush_seconds - time.monotonic()
                while wait > 0:
                    try:
                        batch.append(self._queue.get(timeout=wait))
                    except queue.Empty:
                        break
                    if batch[-1] is _CLOSE:
                        break
                    wait = self._last_write + self._flush_seconds - time.monotonic()
            while True:  # take whatever else is already waiting
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            closing = any(item is _CLOSE for item in batch)
            items = [item for item in batch if item is not _CLOSE]
            if self._error is None and not self.lost.is_set():
                self._write(items)
        self._drop_connection()

    def _write(self, items: list[Any]) -> None:
        try:
            for attempt in through_outages(
                f"progress write for run {self.run_id}", self._retry_seconds, before_retry=self._drop_connection
            ):
                with attempt:
                    self._write_once(items)
        except _LeaseLost:  # rolled back: nothing of this transaction was written
            self._give_up("lease lost (the run was requeued or another worker holds it)")
        except OperationalError as exc:  # the database stayed away: the writes are idempotent, but we stop here
            self._drop_connection()
            if self._token is not None:
                self._give_up(f"database unreachable for {self._retry_seconds:.0f}s ({exc})")
            else:
                self._error = exc
        except BaseException as exc:
            self._error = exc

    def _write_once(self, items: list[Any]) -> None:
        """One transaction: renew the lease (or read the cancel flag), upsert the points, run the actions."""
        if self._conn is None:
            self._conn = get_engine().connect()
        with self._conn.begin():
            if self._token is not None:
                # first, so the row lock orders us against a reconciler requeueing the run
                held, cancel = renew_lease(self._conn, self.run_id, self._token, self._lease_seconds)
                if not held:
                    raise _LeaseLost
            else:
                cancel = cancel_requested(self._conn, self.run_id)
            upsert_points(self._conn, self.run_id, [p for kind, p in items if kind == "point"])
            for kind, action in items:
                if kind == "action":
                    action(self._conn)
            if cancel:
                self.cancel_requested.set()
        self._last_write = time.monotonic()


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
    try:
        writer.close()
        return True
    except RuntimeError:
        log.warning("progress of run %s was not fully recorded", writer.run_id, exc_info=True)
        return False
