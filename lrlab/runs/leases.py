"""Nothing lost, nothing twice: claiming a run under a lease, renewing it, recording its outcome, checkpoints.

A run row is the truth; broker messages are only hints that a run may be ready. So:

- Claim: one UPDATE moves a run queued -> running and gives it a fresh `lease_token`; a second message for
  the same run finds it no longer queued and is dropped. The lease lasts `lease_seconds` and is renewed
  (conditioned on the token) by the worker's progress writer in the same transaction as it writes points.
- Outcome: recorded only where the row still carries the worker's token, so a worker whose lease lapsed
  (and whose run was requeued and claimed by another) can never record a second outcome.
- Hand-back: a worker shutting down releases its run, queued again at once without its message (`release_run`).
- Messages go through lrlab.outbox; a lease that lapses is the reconciler's (lrlab.runs.reconciler), which
  requeues the run, or ends it.
- Bounded: every claim counts an attempt; a lease that lapses on the MAX_ATTEMPTS-th attempt ends the run
  `failed`, so a message that kills its worker (or can never record its outcome) does not loop.

lr-finder jobs follow the same rules: claim under a lease (renewed while the sweep runs), outcome only with
the token, requeued or failed by the reconciler, cancelled like runs.

Lease times come from the clocks of the hosts (keep them NTP-synced; skew must stay well under a lease).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    LargeBinary,
    bindparam,
    case,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from lrlab.db import session_scope
from lrlab.models import (
    Checkpoint,
    CurvePoint,
    LrFinder,
    PbtMember,
    Run,
    UTCDateTime,
    new_id,
    utcnow,
)
from lrlab.schemas import RunStatus
from lrlab.settings import get_settings

log = logging.getLogger(__name__)

# A run whose worker vanished this many times is failed, not requeued again: it is what kills its workers.
MAX_ATTEMPTS = 5

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


def _taken(model: type[Run] | type[LrFinder], worker: str, token: str, seconds: float) -> dict[str, Any]:
    """The values a claim writes: running under a fresh lease, the attempt counted, the first start kept."""
    now = utcnow()
    return {
        "status": RUNNING,
        "started_at": func.coalesce(model.started_at, now),  # the first start; attempts counts the others
        "worker": worker,
        "attempts": model.attempts + 1,
        "lease_token": token,
        "lease_expires_at": now + timedelta(seconds=seconds),
    }


def claim_run(run_id: str, worker: str, *, lease_seconds: float | None = None) -> Claim | None:
    """queued -> running with a fresh lease, atomically; None when the run is not queued (any more)."""
    claims = claim_runs([run_id], worker, lease_seconds=lease_seconds)
    return claims[0] if claims else None


def claim_runs(run_ids: list[str], worker: str, *, lease_seconds: float | None = None) -> list[Claim]:
    """Claim the runs (one, or a fused pack's members) in one transaction: those still queued, in the given
    order. They share one token: a token fences row by row (each run is renewed, finished or handed back where
    its own row carries it), so a member requeued and claimed elsewhere is no longer ours, whatever the others.

    Each resumes from its checkpoint (a population member from its last interval's end); the epochs stored past
    that point are trained again and upserted, and are dropped now, so that a resumed run that ends sooner
    (early stop, divergence: possible where training is not bit-reproducible) leaves no rows of the trajectory
    it abandoned."""
    seconds = lease_seconds if lease_seconds is not None else get_settings().lease_seconds
    token = new_id()
    with session_scope() as session:
        moved = set(
            session.execute(
                update(Run)
                .where(Run.id.in_(run_ids), Run.status == QUEUED)
                .values(**_taken(Run, worker, token, seconds))
                .returning(Run.id)
                .execution_options(synchronize_session=False)
            ).scalars()
        )
        if not moved:
            return []
        runs = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(moved)))}
        ckpts = {c.run_id: c for c in session.scalars(select(Checkpoint).where(Checkpoint.run_id.in_(moved)))}
        members = {
            r[0]: r[1]
            for r in session.execute(select(PbtMember.run_id, PbtMember.epoch).where(PbtMember.run_id.in_(moved)))
        }
        epochs = {r: members[r] if runs[r].pbt_id is not None else (ckpts[r].epoch if r in ckpts else 0) for r in moved}
        for epoch in set(epochs.values()):  # drop the epochs past each run's resume point
            ids = [r for r, e in epochs.items() if e == epoch]
            session.execute(delete(CurvePoint).where(CurvePoint.run_id.in_(ids), CurvePoint.epoch > epoch))
        return [
            Claim(
                run_id=r,
                token=token,
                spec=dict(runs[r].spec),
                attempts=runs[r].attempts,
                checkpoint=bytes(ckpts[r].data) if r in ckpts else None,
                checkpoint_epoch=epochs[r],
                pbt_id=runs[r].pbt_id,
            )
            for r in dict.fromkeys(run_ids)
            if r in moved
        ]


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


def finish_runs(outcomes: list[tuple[str, str, dict[str, Any]]]) -> list[bool]:
    """finish_run for several (run id, token, values) in one transaction: whether each was recorded."""
    done = []
    with session_scope() as session:
        for run_id, token, values in outcomes:
            moved = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.lease_token == token, Run.status == RUNNING)
                .values(finished_at=utcnow(), lease_token=None, lease_expires_at=None, **values)
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            done.append(bool(moved))
        finished = [run_id for (run_id, _, _), ok in zip(outcomes, done, strict=True) if ok]
        if finished:
            session.execute(delete(Checkpoint).where(Checkpoint.run_id.in_(finished)))
    return done


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
        if _hand_back(run):
            session.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id))
        return True


def _hand_back(row: Run | LrFinder) -> bool:
    """A released row (locked): queued, unsent, the attempt not counted; or cancelled, if that was asked (True)."""
    row.lease_token, row.lease_expires_at = None, None
    if row.cancel_requested:
        row.status, row.finished_at = RunStatus.cancelled.value, utcnow()
        return True
    row.status, row.dispatched_at, row.attempts = QUEUED, None, max(row.attempts - 1, 0)
    return False


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
    token = new_id()
    with session_scope() as session:
        moved = session.execute(
            update(LrFinder)
            .where(LrFinder.id == job_id, LrFinder.status == QUEUED)
            .values(**_taken(LrFinder, worker, token, seconds))
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


def release_lr_finder(job_id: str, token: str) -> bool:
    """Hand a range test back at once (a worker shutting down stopped it mid-sweep), as release_run does a run:
    queued, no lease, unsent, the attempt not counted; a sweep restarts from its first step, having no
    checkpoint. One whose cancel was asked for ends cancelled. False: the lease was not mine, nothing written."""
    with session_scope() as session:
        job = session.scalars(
            select(LrFinder)
            .where(LrFinder.id == job_id, LrFinder.lease_token == token, LrFinder.status == RUNNING)
            .with_for_update()
        ).one_or_none()
        if job is None:
            return False
        _hand_back(job)
        return True


# --- checkpoints ------------------------------------------------------------------------------------

UPSERT_CHECKPOINT = text(
    "INSERT INTO checkpoint (run_id, epoch, data, created_at) VALUES (:run_id, :epoch, :data, :created_at)"
    " ON CONFLICT (run_id) DO UPDATE SET epoch = excluded.epoch, data = excluded.data,"
    " created_at = excluded.created_at"
).bindparams(bindparam("data", type_=LargeBinary()), bindparam("created_at", type_=UTCDateTime()))


def save_checkpoint(conn: Connection | Session, run_id: str, epoch: int, data: bytes) -> None:
    """Keep only the newest checkpoint of a run (one row per run)."""
    conn.execute(UPSERT_CHECKPOINT, {"run_id": run_id, "epoch": epoch, "data": data, "created_at": utcnow()})
