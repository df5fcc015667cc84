"""Per-owner limits: active work (runs and lr-finder jobs), and the work (epochs x training samples) one request
may ask for.

The active count is checked and the new rows inserted in one transaction, under a per-owner lock taken before
the count (see `lock_owner`): concurrent requests of one owner take turns, so none can count the same free
places as another and both insert.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from lrlab.catalog import DATASETS
from lrlab.models import Dataset, LrFinder, Run
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.spec import DatasetRef, RunSpec
from lrlab.settings import Settings

# A file under the dataset root, or a plugin's dataset, is not opened by the API; it counts as this many samples in
# the work estimate.
# An uploaded dataset counts as what it holds (measured when it was uploaded).
NOMINAL_FILE_SAMPLES = 10_000
# The first key of the Postgres advisory locks taken here ('lrlq'), so they can't collide with any other use.
LOCK_SPACE = 0x6C726C71
ACTIVE = (RunStatus.queued.value, RunStatus.running.value)
LOCK_OWNER = text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))")
TAKE_WRITE_LOCK = text("UPDATE api_key SET name = name WHERE 0 = 1")


class QuotaExceeded(Exception):
    def __init__(self, msg: str, retry_after: int) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


def samples(dataset: DatasetRef, uploaded: dict[str, int] | None = None) -> int:
    if dataset.name in DATASETS:
        return int(DATASETS[dataset.name]["n_samples"])
    if dataset.id is not None and uploaded is not None and dataset.id in uploaded:
        return uploaded[dataset.id]
    return NOMINAL_FILE_SAMPLES


def uploaded_samples(session: Session, owner: str, specs: list[RunSpec]) -> dict[str, int]:
    ids = {s.dataset.id for s in specs if s.dataset.id is not None}
    if not ids:
        return {}
    rows = session.execute(select(Dataset.id, Dataset.n_samples).where(Dataset.id.in_(ids), Dataset.owner == owner))
    return {dataset_id: n for dataset_id, n in rows}


def lock_owner(session: Session, owner: str) -> None:
    """Take the owner's quota lock; it is held until the session's transaction ends (commit or rollback).

    Postgres: a transaction-scoped advisory lock on (LOCK_SPACE, hash of the owner); two owners whose hashes
    collide merely take turns. Each later statement of a READ COMMITTED transaction sees every commit made
    before the lock was granted. SQLite: a write (that changes nothing) takes the database's write lock
    (the driver begins the transaction there), and a read after it sees the newest commit.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(LOCK_OWNER, {"space": LOCK_SPACE, "owner": owner})
    else:
        session.execute(TAKE_WRITE_LOCK)


def active(session: Session, owner: str) -> int:
    """The owner's queued and running runs (population members included) and lr-finder jobs."""
    runs = session.scalar(select(func.count()).select_from(Run).where(Run.owner == owner, Run.status.in_(ACTIVE)))
    jobs = session.scalar(
        select(func.count()).select_from(LrFinder).where(LrFinder.owner == owner, LrFinder.status.in_(ACTIVE))
    )
    return (runs or 0) + (jobs or 0)


def check_active(session: Session, owner: str, adding: int, settings: Settings) -> None:
    """Lock the owner, then raise QuotaExceeded if `adding` more would pass the limit; the caller inserts them
    before it commits (which releases the lock)."""
    lock_owner(session, owner)
    now = active(session, owner)
    if now + adding > settings.max_active_runs_per_key:
        raise QuotaExceeded(
            f"{now} runs and lr-finder jobs are queued or running and this request adds {adding}; at most"
            f" {settings.max_active_runs_per_key} may be active at once (LRLAB_MAX_ACTIVE_RUNS_PER_KEY)",
            retry_after=30,
        )


def check_runs(session: Session, owner: str, specs: list[RunSpec], settings: Settings, *, jobs: int = 0) -> None:
    """Raise QuotaExceeded if these new runs (and `jobs` lr-finder jobs) would break the owner's limits (holding
    the owner's lock after)."""
    uploaded = uploaded_samples(session, owner, specs)
    work = sum(s.epochs * samples(s.dataset, uploaded) for s in specs)
    if work > settings.max_request_work:
        raise QuotaExceeded(
            f"this request asks for {work:.3g} sample-epochs; one request may ask for at most"
            f" {settings.max_request_work:.3g} (LRLAB_MAX_REQUEST_WORK)",
            retry_after=3600,
        )
    check_active(session, owner, len(specs) + jobs, settings)
