"""Tables: runs and their curves, checkpoints, experiments, lr-finder jobs, advice, uploaded datasets, keys, workers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out (SQLite stores no zone, so we put UTC back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The owner of everything made while keys are not required (`lrlab up` on loopback).
LOCAL_OWNER = "local"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "run"
    __table_args__ = (UniqueConstraint("search_id", "trial"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), index=True, default=LOCAL_OWNER)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]]
    # Denormalised from spec for filtering.
    dataset: Mapped[str] = mapped_column(String(520), index=True)
    optimizer: Mapped[str] = mapped_column(String(16), index=True)
    queue: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(500))
    device: Mapped[str | None] = mapped_column(String(32))
    n_parameters: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    experiment_id: Mapped[str | None] = mapped_column(ForeignKey("experiment.id", ondelete="CASCADE"), index=True)
    # The grid values this run was made from, e.g. {"optimizer": "adam", "lr": 0.001, "seed": 0}.
    params: Mapped[dict[str, Any] | None]
    # Outbox: when the task message was last handed to the broker (NULL: not yet; the reconciler sends it).
    dispatched_at: Mapped[datetime | None]
    # Lease: the worker training the run renews it; once expired, the run goes back to the queue.
    lease_token: Mapped[str | None] = mapped_column(String(36))
    # The fused pack this run trained in (several runs stacked into one population), if any.
    pack_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # Why it trained on its own although its grid asked to fuse it (a plugin's model that cannot be stacked, ...).
    not_fused_reason: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # The population based training this run is a member of, if any (see Pbt, PbtMember).
    pbt_id: Mapped[str | None] = mapped_column(ForeignKey("pbt.id", ondelete="CASCADE"), index=True)
    # The search this run is a trial of, and the trial's number in the search's Optuna study (one run a trial).
    search_id: Mapped[str | None] = mapped_column(ForeignKey("search.id", ondelete="CASCADE"), index=True)
    trial: Mapped[int | None]


class Checkpoint(Base):
    """The latest epoch checkpoint of a running run (torch.save bytes, loaded with weights_only=True)."""

    __tablename__ = "checkpoint"

    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Experiment(Base):
    """A grid: the cartesian product of its lists became one run per cell."""

    __tablename__ = "experiment"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(200))
    execution: Mapped[str] = mapped_column(String(16), default="separate")
    base: Mapped[dict[str, Any]]
    grid: Mapped[dict[str, Any]]
    # Successive halving over the grid's runs (lrlab.schemas.search.EarlyStopping), if asked for.
    early_stopping: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The advice this grid is a stage of, if any (its search, or its replicates).
    advice_id: Mapped[str | None] = mapped_column(ForeignKey("advice.id", ondelete="CASCADE"), index=True)


class Search(Base):
    """A model-based search: an Optuna study (in this database, `study_name`) asked for trials batch by batch;
    each trial is a run. Its row is the lock that orders asking and telling (lrlab.search.driver)."""

    __tablename__ = "search"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]]  # the request, defaults filled in
    study_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Outbox: when the search's ADVANCE_SEARCH message was last handed to the broker (NULL: not yet).
    dispatched_at: Mapped[datetime | None]


class RungReport(Base):
    """Successive halving: a run's score when it reached a rung, and whether it went on (NULL while undecided).

    A run's decision at a rung is made once: a resumed run, or a redelivered pack, finds it here. The runs of
    one cohort (an experiment's grid) are judged against the reports made before theirs, in `id` order.
    """

    __tablename__ = "rung_report"
    __table_args__ = (UniqueConstraint("run_id", "rung"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cohort: Mapped[str] = mapped_column(String(36), index=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"))
    rung: Mapped[int]
    score: Mapped[float | None] = mapped_column(Float)
    continued: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Pbt(Base):
    """A population based training: members are runs; rounds of exploit and explore every `interval` epochs.

    `boundary` is the last epoch after which every member stopped and the round was decided; members then
    train on to the next boundary. Its row is the lock that serialises those decisions.
    """

    __tablename__ = "pbt"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    execution: Mapped[str] = mapped_column(String(16))  # fused | distributed
    spec: Mapped[dict[str, Any]]  # the request, defaults filled in
    queue: Mapped[str] = mapped_column(String(16))
    boundary: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class PbtMember(Base):
    """One member's place in its population: where its checkpoint stands and the hyperparameters it follows."""

    __tablename__ = "pbt_member"

    pbt_id: Mapped[str] = mapped_column(ForeignKey("pbt.id", ondelete="CASCADE"), primary_key=True)
    member: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), unique=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs trained and checkpointed
    # whose checkpoint at `epoch` holds the weights it goes on from (itself, or the member it copied)
    weights_from: Mapped[int] = mapped_column(Integer)
    hyperparameters: Mapped[dict[str, Any]]  # in force from epoch + 1
    history: Mapped[list[Any]]  # [{"start": epoch, "hyperparameters": {...}, "source": member | null}, ...]


class PbtEvent(Base):
    """Lineage: after `epoch`, member `target` took `source`'s weights and moved from `old` to `new`."""

    __tablename__ = "pbt_event"
    __table_args__ = (UniqueConstraint("pbt_id", "epoch", "target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pbt_id: Mapped[str] = mapped_column(ForeignKey("pbt.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int]
    target: Mapped[int]
    source: Mapped[int]
    old: Mapped[dict[str, Any]]
    new: Mapped[dict[str, Any]]
    resampled: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LrFinder(Base):
    """A learning-rate range test job: one sweep of exponentially growing lrs on the workers."""

    __tablename__ = "lr_finder"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), index=True, default=LOCAL_OWNER)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # points, suggested_lr, rule, suggested_grid, stopped_early, reason, n_parameters, seconds
    result: Mapped[dict[str, Any] | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    # Outbox, as for runs: NULL until the task message has been handed to the broker.
    dispatched_at: Mapped[datetime | None]
    # Lease and claims, as for runs: a job whose lease lapsed MAX_ATTEMPTS times is failed, not requeued.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_token: Mapped[str | None] = mapped_column(String(36))
    lease_expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # The advice this range test is the first stage of, if any.
    advice_id: Mapped[str | None] = mapped_column(ForeignKey("advice.id", ondelete="CASCADE"), index=True)


class Advice(Base):
    """One request's answer to "which optimizer, which lr?": a state machine over stages that are lrlab objects
    (range tests, then a search experiment, then replicates), advanced as each stage's last object ends.

    `plan` holds what each stage was made from and its objects' ids; `result` the answer. Its row is the lock
    that orders every decision about it (lrlab.advice.pipeline).
    """

    __tablename__ = "advice"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]  # the request, defaults filled in
    plan: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class CurvePoint(Base):
    """One row per (run, epoch): written as an upsert, so a redelivered task rewrites the same row."""

    __tablename__ = "curve_point"

    run_id: Mapped[str] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    nonfinite: Mapped[list[Any]] = mapped_column(default=list)


class WorkerHeartbeat(Base):
    """Live workers; `device: auto` goes to the gpu queue only while a GPU worker is fresh here."""

    __tablename__ = "worker_heartbeat"

    hostname: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(String(200))
    has_gpu: Mapped[bool] = mapped_column(Boolean)
    device_name: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # The plugins it offers (trainer.plugins' advertisement: models, datasets, refused); NULL until it has listed them.
    plugins: Mapped[dict[str, Any] | None]


class ApiKey(Base):
    """A caller: each key is its own owner. Only the SHA-256 of the key is stored."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings so a person can tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """The first response to a POST with an Idempotency-Key, replayed for the same key and body."""

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(36))
    key: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of method, path and body
    status_code: Mapped[int]
    body: Mapped[dict[str, Any]]
    location: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Blob(Base):
    """An uploaded file in the blob store, by content hash; deleted once no dataset row names it.

    Its row is also the lock that orders an upload putting the file against a delete removing it.
    """

    __tablename__ = "blob"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An owner's uploaded dataset: what validation found in a blob. The same bytes upload to the same row."""

    __tablename__ = "dataset"
    __table_args__ = (UniqueConstraint("owner", "sha256", "label_column"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(36), default=LOCAL_OWNER)  # indexed by the unique constraint
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # npz | csv | images
    sha256: Mapped[str] = mapped_column(ForeignKey("blob.sha256"), index=True)
    # CSV only: the column holding the labels ("" for other kinds, so the unique constraint can see it).
    label_column: Mapped[str] = mapped_column(String(200), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    n_samples: Mapped[int]
    n_classes: Mapped[int]
    input_shape: Mapped[list[Any]]
    class_names: Mapped[list[Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
