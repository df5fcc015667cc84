"""The reconciler, the outbox's other half: every worker runs a pass every `reconcile_seconds`.

A pass requeues runs (and lr-finder jobs) whose lease expired, or ends them (cancelled when a cancel was asked
for, failed at MAX_ATTEMPTS); sends what carries no stamp (a send that failed, a run handed back) and sends
again what has waited longer than `redispatch_seconds` (a message the broker lost); moves on every advice whose
stage ended with nobody to move it on (lrlab.advice.pipeline.reconcile); and drops the checkpoints of finished
runs. Rows are taken FOR UPDATE SKIP LOCKED, so reconcilers on many workers never act on one row
twice, and what a step queues is stamped in its transaction and sent after its commit (lrlab.outbox).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from celery import Celery
from sqlalchemy import and_, delete, exists, or_, select
from sqlalchemy.orm import Session

from lrlab import broker, outbox
from lrlab.advice import pipeline as advice
from lrlab.db import session_scope
from lrlab.models import Checkpoint, LrFinder, Run, Search, WorkerHeartbeat, utcnow
from lrlab.outbox import Message
from lrlab.runs.leases import MAX_ATTEMPTS, QUEUED, RUNNING
from lrlab.schemas import RunStatus
from lrlab.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Work is stamped when it is queued, so a queued row without a stamp was handed back or its send failed. One
# younger than this is left alone: it was just written outside the outbox by someone who claims it (tests do).
OUTBOX_GRACE_SECONDS = 2.0
# A running search with no trial queued or training is advanced after this long since it last moved (a worker
# that ends a trial advances it at once; this is for trials ended by the api or the reconciler).
IDLE_SEARCH_SECONDS = 10.0
# Rows one reconciler pass takes per kind; the next pass takes the rest.
BATCH = 200


@dataclass
class Reconciled:
    """What one pass did (ids), for logs and tests."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)
    lr_finders_requeued: list[str] = field(default_factory=list)
    lr_finders_failed: list[str] = field(default_factory=list)
    lr_finders_cancelled: list[str] = field(default_factory=list)
    lr_finders_dispatched: list[str] = field(default_factory=list)
    searches_dispatched: list[str] = field(default_factory=list)
    advice_advanced: list[str] = field(default_factory=list)
    checkpoints_dropped: int = 0

    PARTS = (
        "requeued",
        "failed",
        "cancelled",
        "dispatched",
        "lr_finders_requeued",
        "lr_finders_failed",
        "lr_finders_cancelled",
        "lr_finders_dispatched",
        "searches_dispatched",
        "advice_advanced",
    )

    def __bool__(self) -> bool:
        return bool(str(self))

    def __str__(self) -> str:
        """The non-empty parts, e.g. `requeued 1 (3f2a...), dispatched 1`."""
        parts = []
        for name in self.PARTS:
            ids: list[str] = getattr(self, name)
            if ids:
                shown = "" if name.endswith("dispatched") else f" ({', '.join(ids)})"
                parts.append(f"{name.replace('_', ' ')} {len(ids)}{shown}")
        if self.checkpoints_dropped:
            parts.append(f"checkpoints dropped {self.checkpoints_dropped}")
        return ", ".join(parts)


CANCELLED, FAILED = RunStatus.cancelled.value, RunStatus.failed.value


Leased = TypeVar("Leased", Run, LrFinder)


def _lapse(rows: Sequence[Leased], now: datetime, ends: dict[str, list[str]]) -> list[Leased]:
    """Lapsed leases' ends (the rows locked): `cancelled` when a cancel was asked (its worker died while stopping
    it: stopped is what was asked for), `failed` on the MAX_ATTEMPTS-th lost worker (it is what kills its
    workers), else queued again. Each row's id goes to ends[its status]; returns the rows queued again."""
    requeued = []
    for row in rows:
        row.lease_token, row.lease_expires_at = None, None
        if row.cancel_requested:
            row.status, row.finished_at = CANCELLED, now
        elif row.attempts >= MAX_ATTEMPTS:
            row.status, row.finished_at = FAILED, now
            row.error = f"its worker was lost {row.attempts} times (last: {row.worker}); not retried again"
        else:
            row.status = QUEUED
            requeued.append(row)
        ends[row.status].append(row.id)
    return requeued


def _requeue_expired(session: Session, now: datetime, out: Reconciled) -> list[Message]:
    """running with an expired lease -> queued, or failed/cancelled when that is the right end.

    Returns the requeued runs' messages, stamped here, to send once this transaction has committed: a worker
    receiving one earlier would find the run still running (its claim does not wait for our row lock: the row
    it sees does not match `status = queued`) and drop it, leaving the run to the redispatch timeout.
    """
    rows = session.scalars(
        select(Run)
        .where(Run.status == RUNNING, Run.lease_expires_at < now)
        .order_by(Run.lease_expires_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    requeued = _lapse(rows, now, {QUEUED: out.requeued, CANCELLED: out.cancelled, FAILED: out.failed})
    if requeued:
        log.warning("lease expired, requeued: %s", ", ".join(r.id for r in requeued))
    if out.failed or out.cancelled:
        session.execute(delete(Checkpoint).where(Checkpoint.run_id.in_(out.failed + out.cancelled)))
    return outbox.runs(session, requeued)


def _unsent(model: type[Run] | type[LrFinder], now: datetime, redispatch_seconds: float) -> Any:
    """Queued and never sent (or its send failed, or it was handed back), or sent too long ago (lost message)."""
    return and_(
        model.status == QUEUED,
        or_(
            and_(model.dispatched_at.is_(None), model.created_at < now - timedelta(seconds=OUTBOX_GRACE_SECONDS)),
            model.dispatched_at < now - timedelta(seconds=redispatch_seconds),
        ),
    )


def _resend_runs(session: Session, settings: Settings, now: datetime) -> list[Message]:
    rows = session.scalars(
        select(Run)
        .where(_unsent(Run, now, settings.redispatch_seconds))
        .order_by(Run.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    return outbox.runs(session, rows)


def _reconcile_lr_finders(session: Session, settings: Settings, now: datetime, out: Reconciled) -> list[Message]:
    """Expired leases as for runs (requeued, or cancelled, or failed at MAX_ATTEMPTS), then the unsent ones."""
    # A job claimed before jobs had leases (migration 0009) has none: its worker's heartbeat stands in.
    fresh = now - timedelta(seconds=settings.heartbeat_ttl_seconds)
    expired = or_(
        LrFinder.lease_expires_at < now,
        and_(
            LrFinder.lease_expires_at.is_(None),
            LrFinder.started_at < fresh,
            ~exists().where(WorkerHeartbeat.hostname == LrFinder.worker, WorkerHeartbeat.last_seen_at >= fresh),
        ),
    )
    lapsed = session.scalars(
        select(LrFinder)
        .where(LrFinder.status == RUNNING, expired)
        .limit(BATCH)
        .with_for_update(skip_locked=True, of=LrFinder)
    ).all()
    ends = {QUEUED: out.lr_finders_requeued, CANCELLED: out.lr_finders_cancelled, FAILED: out.lr_finders_failed}
    orphaned = _lapse(lapsed, now, ends)
    messages = outbox.lr_finders(session, orphaned)  # stamped now: the query below does not take them again
    unsent = session.scalars(
        select(LrFinder)
        .where(_unsent(LrFinder, now, settings.redispatch_seconds))
        .order_by(LrFinder.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    return messages + outbox.lr_finders(session, unsent)


def _resend_searches(session: Session, settings: Settings, now: datetime) -> list[Message]:
    """Searches not finished that have not moved for `redispatch_seconds` (or whose first message was never
    sent), and running ones with no trial left to train for IDLE_SEARCH_SECONDS (their last runs were ended by
    the api or the reconciler, not by a worker that would have advanced them): an advance for each. One that
    finds nothing to do is harmless; one after a lost worker or api tells what ended and asks what is missing
    (lrlab.search.driver)."""
    training = exists().where(Run.search_id == Search.id, Run.status.in_((QUEUED, RUNNING)))
    rows = session.scalars(
        select(Search)
        .where(
            Search.status.in_((QUEUED, RUNNING)),
            or_(
                and_(Search.dispatched_at.is_(None), Search.created_at < now - timedelta(seconds=OUTBOX_GRACE_SECONDS)),
                Search.dispatched_at < now - timedelta(seconds=settings.redispatch_seconds),
                and_(
                    Search.status == RUNNING,
                    ~training,
                    Search.dispatched_at < now - timedelta(seconds=IDLE_SEARCH_SECONDS),
                ),
            ),
        )
        .order_by(Search.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    return outbox.searches(session, rows)


def reconcile(*, app: Celery | None = None, settings: Settings | None = None) -> Reconciled:
    """One pass: expired leases, the outbox, lost messages, orphaned lr-finder jobs, checkpoints of finished runs.

    Each step is its own transaction, its messages sent after its commit, so a failure in one (or a broker
    that is away) leaves the others done.
    """
    app = app or broker.client()
    settings = settings or get_settings()
    out = Reconciled()
    with session_scope() as session:
        messages = _requeue_expired(session, utcnow(), out)
    out.dispatched += outbox.send(messages, app=app)
    with session_scope() as session:
        messages = _resend_runs(session, settings, utcnow())
    out.dispatched += outbox.send(messages, app=app)
    with session_scope() as session:
        messages = _reconcile_lr_finders(session, settings, utcnow(), out)
    out.lr_finders_dispatched += outbox.send(messages, app=app)
    # an advice whose stage ended with nobody to move it on (a run cancelled or failed here or by the api, a
    # worker lost between an outcome and its advance): moved on now, each in a transaction of its own
    out.advice_advanced = advice.reconcile(app=app)
    with session_scope() as session:
        messages = _resend_searches(session, settings, utcnow())
    out.searches_dispatched += outbox.send(messages, app=app)
    with session_scope() as session:
        # a run cancelled while queued after a requeue keeps the checkpoint its last worker left
        out.checkpoints_dropped = session.execute(
            delete(Checkpoint).where(~exists().where(Run.id == Checkpoint.run_id, Run.status.in_((QUEUED, RUNNING))))
        ).rowcount  # type: ignore[attr-defined]
    return out
