"""Per-owner limits: active runs, and the work (epochs x training samples) one request may ask for."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lrlab.catalog import DATASETS
from lrlab.models import Dataset, Run
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.spec import DatasetRef, RunSpec
from lrlab.settings import Settings

# A file under the dataset root is not opened by the API; it counts as this many samples in the work estimate.
# An uploaded dataset counts as what it holds (measured when it was uploaded).
NOMINAL_FILE_SAMPLES = 10_000


class QuotaExceeded(Exception):
    def __init__(self, msg: str, retry_after: int) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


def samples(dataset: DatasetRef, uploaded: dict[str, int] | None = None) -> int:
    if dataset.name is not None:
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


def check_runs(session: Session, owner: str, specs: list[RunSpec], settings: Settings) -> None:
    """Raise QuotaExceeded if these new runs would break the owner's limits."""
    uploaded = uploaded_samples(session, owner, specs)
    work = sum(s.epochs * samples(s.dataset, uploaded) for s in specs)
    if work > settings.max_request_work:
        raise QuotaExceeded(
            f"this request asks for {work:.3g} sample-epochs; one request may ask for at most"
            f" {settings.max_request_work:.3g} (LRLAB_MAX_REQUEST_WORK)",
            retry_after=3600,
        )
    active = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.owner == owner, Run.status.in_([RunStatus.queued.value, RunStatus.running.value]))
    )
    if (active or 0) + len(specs) > settings.max_active_runs_per_key:
        raise QuotaExceeded(
            f"{active} runs are queued or running and this request adds {len(specs)}; at most"
            f" {settings.max_active_runs_per_key} may be active at once (LRLAB_MAX_ACTIVE_RUNS_PER_KEY)",
            retry_after=30,
        )
