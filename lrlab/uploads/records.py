"""Uploaded datasets in the database and the blob store: store one (deduplicated by hash), look up, delete.

A blob's row in `blob` is the lock that orders the two file operations: an upload moving a file into the
store and a delete removing the last reference to it both hold it (FOR UPDATE; SQLite serialises writers
anyway), blob first and dataset rows second, so neither can undo the other. Files are deleted only when no
dataset row of any owner names the hash any more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lrlab.models import Blob, Dataset, LrFinder, Run, utcnow
from lrlab.schemas.datasets import DatasetPublic
from lrlab.schemas.runs import RunStatus
from lrlab.storage.cache import Cache
from lrlab.uploads.blobs import BlobStore
from lrlab.uploads.validation import Inspection, cache_name

log = logging.getLogger(__name__)

ACTIVE = (RunStatus.queued.value, RunStatus.running.value)


class UnknownDataset(LookupError):
    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"no dataset {dataset_id}")
        self.dataset_id = dataset_id


def find(session: Session, owner: str, sha256: str, label_column: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.owner == owner, Dataset.sha256 == sha256, Dataset.label_column == label_column)
    )


def storage_used(session: Session, owner: str) -> int:
    return int(
        session.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.owner == owner)) or 0
    )


def _lock_blob(session: Session, sha256: str, size: int) -> None:
    """Make sure the blob's row exists and hold it until the commit."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for _ in range(3):  # a concurrent delete may remove the row between our insert and our lock
        session.execute(
            insert(Blob)
            .values(sha256=sha256, size_bytes=size, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["sha256"])
        )
        if session.scalar(select(Blob.sha256).where(Blob.sha256 == sha256).with_for_update()) is not None:
            return
    raise RuntimeError(f"could not lock blob {sha256}")


def store(
    session: Session,
    blobs: BlobStore,
    *,
    owner: str,
    staged: Path,
    sha256: str,
    size: int,
    name: str,
    label_column: str,
    found: Inspection,
) -> tuple[Dataset, bool]:
    """Move a checked upload into the store and insert its row in one transaction: (dataset, created).

    If the commit fails, a blob this call added is removed again: never a file without a row.
    """
    _lock_blob(session, sha256, size)
    had_blob = blobs.exists(sha256)
    if not had_blob:  # streamed into the store (S3: a multipart upload) under the blob's lock; the bytes are the same
        blobs.put(sha256, staged)
    dataset = Dataset(
        owner=owner,
        name=name,
        kind=found.kind,
        sha256=sha256,
        label_column=label_column,
        size_bytes=size,
        n_samples=found.n_samples,
        n_classes=found.n_classes,
        input_shape=found.input_shape,
        class_names=found.class_names,
        created_at=utcnow(),
    )
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError:  # a concurrent twin of this upload (same owner, same bytes) won
        session.rollback()
        twin = find(session, owner, sha256, label_column)
        if twin is None:
            raise
        return twin, False
    except BaseException:
        session.rollback()
        if not had_blob:
            blobs.delete(sha256)
        raise
    return dataset, True


def owned(session: Session, owner: str, ids: Iterable[str]) -> dict[str, Dataset]:
    """The caller's datasets by id, share-locked until the commit so a concurrent delete waits for new runs.

    Raises UnknownDataset for the first id that is missing or another owner's.
    """
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.scalars(
        select(Dataset).where(Dataset.id.in_(wanted), Dataset.owner == owner).with_for_update(read=True)
    )
    found = {row.id: row for row in rows}
    for dataset_id in wanted:
        if dataset_id not in found:
            raise UnknownDataset(dataset_id)
    return found


def users(session: Session, dataset: Dataset) -> int:
    """Queued or running runs and lr-finder jobs of the dataset's owner that train on it."""
    runs = session.scalar(
        select(func.count())
        .select_from(Run)
        .where(Run.owner == dataset.owner, Run.dataset == f"upload:{dataset.id}", Run.status.in_(ACTIVE))
    )
    jobs = session.scalars(select(LrFinder.spec).where(LrFinder.owner == dataset.owner, LrFinder.status.in_(ACTIVE)))
    in_jobs = sum(1 for spec in jobs if (spec.get("dataset") or {}).get("id") == dataset.id)
    return int(runs or 0) + in_jobs


class DatasetInUse(Exception):
    pass


def delete(session: Session, blobs: BlobStore, dataset: Dataset, cache_dir: Path | None) -> None:
    """Delete the row (409-worthy DatasetInUse while active runs use it) and, if it was the last one, the blob."""
    sha256 = dataset.sha256
    session.scalar(select(Blob.sha256).where(Blob.sha256 == sha256).with_for_update())
    session.refresh(dataset, with_for_update=True)  # waits for runs being created on it right now
    if (n := users(session, dataset)) > 0:
        session.rollback()
        raise DatasetInUse(f"{n} queued or running run(s) use this dataset; cancel them or wait for them to finish")
    kind, label_column = dataset.kind, dataset.label_column
    session.delete(dataset)
    session.flush()
    left = select(func.count()).select_from(Dataset).where(Dataset.sha256 == sha256)
    last = not session.scalar(left)
    unpacked_unused = not session.scalar(left.where(Dataset.label_column == label_column))
    if last:
        session.execute(sql_delete(Blob).where(Blob.sha256 == sha256))
        # Under the blob's lock, before the commit: an upload of the same bytes waits, then puts it back.
        blobs.delete(sha256)
    session.commit()
    if unpacked_unused and cache_dir is not None:
        # A worker's cache on this host (`lrlab up`), unless a run uses it; elsewhere the caches' own bounds decide.
        Cache(cache_dir, 0).discard(cache_name(kind, sha256, label_column))


def to_public(dataset: Dataset) -> DatasetPublic:
    return DatasetPublic(
        id=dataset.id,
        name=dataset.name,
        kind=dataset.kind,  # type: ignore[arg-type]
        n_samples=dataset.n_samples,
        n_classes=dataset.n_classes,
        input_shape=dataset.input_shape,
        sha256=dataset.sha256,
        size_bytes=dataset.size_bytes,
        class_names=dataset.class_names,
        label_column=dataset.label_column or None,
        created_at=dataset.created_at,
    )
