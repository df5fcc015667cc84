"""Nothing lost, nothing twice: claiming a run under a lease, checkpoints, dispatch (the outbox) and the reconciler.

A run row is the truth; broker messages are only hints that a run may be ready. So:

- Claim: one UPDATE moves a run queued -> running and gives it a fresh `lease_token`; a second message for
  the same run finds it no longer queued and is dropped. The lease lasts `lease_seconds` and is renewed
  (conditioned on the token) by the worker's progress writer in the same transaction as it writes points.
- Outcome: recorded only where the row still carries the worker's token, so a worker whose lease lapsed
  (and whose run was requeued and claimed by another) can never record a second outcome.
- Messages go through lrlab.outbox: `dispatched_at` stamped in the transaction that queues the work, the
  message sent after its commit; a send that fails clears the stamp.
- Reconciler (every worker, every `reconcile_seconds`), the outbox's other half: requeues runs whose lease
  expired, sends what carries no stamp, and sends again what has waited longer than `redispatch_seconds`
  (a lost message).
  Rows are taken FOR UPDATE SKIP LOCKED, so reconcilers on many workers never act on one row twice.
- Bounded: every claim counts an attempt; a lease that lapses on the MAX_ATTEMPTS-th attempt ends the run
  `failed`, so a message that kills its worker (or can never record its outcome) does not loop.

lr-finder jobs follow the same rules: claim under a lease (renewed while the sweep runs), outcome only with
the token, requeued or failed by the reconciler, cancelled like runs.

Lease times come from the clocks of the hosts (keep them NTP-synced; skew must stay well under a lease).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import (
    Connection,
    LargeBinary,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from lrlab import outbox
from lrlab import queue as broker
from lrlab.db import session_scope
from lrlab.models import (
    Checkpoint,
    CurvePoint,
    LrFinder,
    PbtMember,
    Run,
    UTCDateTime,
    WorkerHeartbeat,
    new_id,
    utcnow,
)
from lrlab.outbox import Message
from lrlab.schemas import RunStatus
from lrlab.settings import Settings, get_settings

log = logging.getLogger(__name__)

# A run whose worker vanished this many times is failed, not requeued again: it is what kills its workers.
MAX_ATTEMPTS = 5
# Work is stamped when it is queued, so a queued row without a stamp was handed back or its send failed. One
# younger than this is left alone: it was just written outside the outbox by someone who claims it (tests do).
OUTBOX_GRACE_SECONDS = 2.0
# Rows one reconciler pass takes per kind; the next pass takes the rest.
BATCH = 200

QUEUED, RUNNING = RunStatus.queued.value, RunStatus.running.value


# --- claim, renew, finish -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What a worker needs once it owns a run: the spec, its lease token and the checkpoint to resume from."""

    run_id: str
    token: str
    spec: dict[str, Any]
    attempts: int
    checkpoint: bytes | None  # trainer.checkpoint_to_bytes output; None: start at epoch 1
    checkpoint_epoch: int  # epochs the checkpoint holds (0 without one)
    pbt_id: str | None = None  # a population member: its checkpoints are in the checkpoint store (lrlab.pbt)


def claim_run(run_id: str, worker: str, *, lease_seconds: float | None = None) -> Claim | None:
    """queued -> running with a fresh lease, atomically; None when the run is not queued (any more)."""
    seconds = lease_seconds if lease_seconds is not None else get_settings().lease_seconds
    token, now = new_id(), utcnow()
    with session_scope() as session:
        moved = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == QUEUED)
            .values(
                status=RUNNING,
                started_at=func.coalesce(Run.started_at, now),  # the first start; attempts counts the others
                worker=worker,
                attempts=Run.attempts + 1,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=seconds),
            )
        ).rowcount  # type: ignore[attr-defined]
        if not moved:
            return None
        run = session.get(Run, run_id)
        assert run is not None
        ckpt = session.get(Checkpoint, run_id)
        epoch = ckpt.epoch if ckpt is not None else 0
        if run.pbt_id is not None:  # a population member resumes where its last interval ended
            epoch = session.scalars(select(PbtMember.epoch).where(PbtMember.run_id == run_id)).one()
        # Epochs past the checkpoint are trained again and upserted; drop them now so that a resumed run
        # that ends sooner (early stop, divergence: possible where training is not bit-reproducible)
        # leaves no rows of the trajectory it abandoned.
        session.execute(delete(CurvePoint).where(CurvePoint.run_id == run_id, CurvePoint.epoch > epoch))
        return Claim(
            run_id=run_id,
            token=token,
            spec=dict(run.spec),
            attempts=run.attempts,
            checkpoint=bytes(ckpt.data) if ckpt is not None else None,
            checkpoint_epoch=epoch,
            pbt_id=run.pbt_id,
        )


# Raw SQL prepared once, like store.UPSERT_POINT: the progress writer runs it twice a second per run.
RENEW_LEASE = text(
    "UPDATE run SET lease_expires_at = :expires WHERE id = :id AND lease_token = :token AND status = :running"
    " RETURNING cancel_requested"
).bindparams(bindparam("expires", type_=UTCDateTime()))


def renew_lease(conn: Connection, run_id: str, token: str, seconds: float) -> tuple[bool, bool]:
    """Extend my lease by `seconds` from now: (still mine, cancel requested). Locks the run row until commit."""
    row = conn.execute(
        RENEW_LEASE,
        {"expires": utcnow() + timedelta(seconds=seconds), "id": run_id, "token": token, "running": RUNNING},
    ).first()
    return (row is not None, bool(row[0]) if row is not None else False)


def finish_run(run_id: str, token: str, **values: Any) -> bool:
    """Record the outcome if the lease is still mine (and drop the checkpoint); False: it is not, nothing written."""
    with session_scope() as session:
        moved = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.lease_token == token, Run.status == RUNNING)
            .values(finished_at=utcnow(), lease_token=None, lease_expires_at=None, **values)
        ).rowcount  # type: ignore[attr-defined]
        if moved:
            session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id))
        return bool(moved)


def release_run(run_id: str, token: str) -> bool:
    """Hand a run back at once, as the reconciler would once its lease expired: queued, no lease, unsent.

    For a worker shutting down: its last checkpoint stays, so whichever worker claims the run next resumes
    from there. Its message is sent by the next reconciler pass (any live worker's, or this host's first once
    it starts again), not from here, where the worker shutting down could receive it itself. A run whose
    cancel was asked for ends cancelled instead. The hand-back is not a lost worker, so it does not count
    towards MAX_ATTEMPTS. False: the lease was not mine any more, nothing written.
    """
    with session_scope() as session:
        run = session.scalars(
            select(Run).where(Run.id == run_id, Run.lease_token == token, Run.status == RUNNING).with_for_update()
        ).one_or_none()
        if run is None:
            return False
        run.lease_token, run.lease_expires_at = None, None
        if run.cancel_requested:
            run.status, run.finished_at = RunStatus.cancelled.value, utcnow()
            session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id))
            return True
        run.status, run.dispatched_at, run.attempts = QUEUED, None, max(run.attempts - 1, 0)
        return True


# --- lr-finder jobs: the same claim, lease and outcome rules ----------------------------------------


@dataclass(frozen=True)
class JobClaim:
    """An lr-finder job a worker owns: its request, its lease token and which claim this is."""

    job_id: str
    token: str
    spec: dict[str, Any]
    attempts: int


def claim_lr_finder(job_id: str, worker: str, *, lease_seconds: float | None = None) -> JobClaim | None:
    """queued -> running with a fresh lease, atomically; None when the job is not queued (any more)."""
    seconds = lease_seconds if lease_seconds is not None else get_settings().lease_seconds
    token, now = new_id(), utcnow()
    with session_scope() as session:
        moved = session.execute(
            update(LrFinder)
            .where(LrFinder.id == job_id, LrFinder.status == QUEUED)
            .values(
                status=RUNNING,
                started_at=func.coalesce(LrFinder.started_at, now),
                worker=worker,
                attempts=LrFinder.attempts + 1,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=seconds),
            )
        ).rowcount  # type: ignore[attr-defined]
        if not moved:
            return None
        job = session.get(LrFinder, job_id)
        assert job is not None
        return JobClaim(job_id=job_id, token=token, spec=dict(job.spec), attempts=job.attempts)


RENEW_LR_FINDER_LEASE = text(
    "UPDATE lr_finder SET lease_expires_at = :expires WHERE id = :id AND lease_token = :token"
    " AND status = :running RETURNING cancel_requested"
).bindparams(bindparam("expires", type_=UTCDateTime()))


def renew_lr_finder_lease(job_id: str, token: str, seconds: float) -> tuple[bool, bool]:
    """Extend my lease by `seconds` from now: (still mine, cancel requested)."""
    with session_scope() as session:
        row = session.execute(
            RENEW_LR_FINDER_LEASE,
            {"expires": utcnow() + timedelta(seconds=seconds), "id": job_id, "token": token, "running": RUNNING},
        ).first()
    return (row is not None, bool(row[0]) if row is not None else False)


def finish_lr_finder(job_id: str, token: str, **values: Any) -> bool:
    """Record the outcome if the lease is still mine; False: it is not, nothing written.

    A sweep that ends while a cancel is requested (stopped by it, or done just before it was seen) is
    recorded `cancelled`, with the points it has; a failure stays `failed`.
    """
    if values.get("status") == RunStatus.succeeded.value:
        values["status"] = case((LrFinder.cancel_requested, RunStatus.cancelled.value), else_=values["status"])
    with session_scope() as session:
        moved = session.execute(
            update(LrFinder)
            .where(LrFinder.id == job_id, LrFinder.lease_token == token, LrFinder.status == RUNNING)
            .values(finished_at=utcnow(), lease_token=None, lease_expires_at=None, **values)
        ).rowcount  # type: ignore[attr-defined]
        return bool(moved)


# --- checkpoints ------------------------------------------------------------------------------------

UPSERT_CHECKPOINT = text(
    "INSERT INTO checkpoint (run_id, epoch, data, created_at) VALUES (:run_id, :epoch, :data, :created_at)"
    " ON CONFLICT (run_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data,"
    " created_at = excluded.created_at"
).bindparams(bindparam("data", type_=LargeBinary()), bindparam("created_at", type_=UTCDateTime()))


def save_checkpoint(conn: Connection | Session, run_id: str, epoch: int, data: bytes) -> None:
    """Keep only the newest checkpoint of a run (one row per run)."""
    conn.execute(UPSERT_CHECKPOINT, {"run_id": run_id, "epoch": epoch, "data": data, "created_at": utcnow()})


# --- sending ---------------------------------------------------------------------------------------


def dispatch_runs(targets: Iterable[tuple[str, str]], *, app: Celery | None = None) -> int:
    """Queue each (run id, queue) through the outbox now: stamp, commit, send. Returns how many were sent."""
    with session_scope() as session:
        messages = outbox.runs(session, [outbox.Target(run_id, queue) for run_id, queue in targets])
    return len(outbox.send(messages, app=app))


# --- the reconciler -----------------------------------------------------------------------------------


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
    requeued = []
    for run in rows:
        run.lease_token, run.lease_expires_at = None, None
        if run.cancel_requested:  # its worker died while stopping it: stopped is what was asked for
            run.status, run.finished_at = RunStatus.cancelled.value, now
            out.cancelled.append(run.id)
        elif run.attempts >= MAX_ATTEMPTS:
            run.status, run.finished_at = RunStatus.failed.value, now
            run.error = f"its worker was lost {run.attempts} times (last: {run.worker}); not retried again"
            out.failed.append(run.id)
        else:
            run.status = QUEUED
            requeued.append(run)
            out.requeued.append(run.id)
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
    orphaned = []
    for job in lapsed:
        job.lease_token, job.lease_expires_at = None, None
        if job.cancel_requested:
            job.status, job.finished_at = RunStatus.cancelled.value, now
            out.lr_finders_cancelled.append(job.id)
        elif job.attempts >= MAX_ATTEMPTS:
            job.status, job.finished_at = RunStatus.failed.value, now
            job.error = f"its worker was lost {job.attempts} times (last: {job.worker}); not retried again"
            out.lr_finders_failed.append(job.id)
        else:
            job.status = QUEUED
            orphaned.append(job)
            out.lr_finders_requeued.append(job.id)
    messages = outbox.lr_finders(session, orphaned)  # stamped now: the query below does not take them again
    unsent = session.scalars(
        select(LrFinder)
        .where(_unsent(LrFinder, now, settings.redispatch_seconds))
        .order_by(LrFinder.created_at)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    return messages + outbox.lr_finders(session, unsent)


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
    with session_scope() as session:
        # a run cancelled while queued after a requeue keeps the checkpoint its last worker left
        out.checkpoints_dropped = session.execute(
            delete(Checkpoint).where(~exists().where(Run.id == Checkpoint.run_id, Run.status.in_((QUEUED, RUNNING))))
        ).rowcount  # type: ignore[attr-defined]
    return out
