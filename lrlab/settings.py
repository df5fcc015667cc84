"""Service settings: one pydantic-settings object, read once from LRLAB_* environment variables."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lrlab.schemas.layers import DEFAULT_MAX_PARAMETERS


class Settings(BaseSettings):
    """Everything the api and the worker read from the environment.

    With nothing set, the service runs embedded: a SQLite database and a SQLite-backed
    Celery transport under ``data_dir``; no Postgres, no Redis.
    """

    model_config = SettingsConfigDict(env_prefix="LRLAB_", extra="ignore")

    data_dir: Path = Field(Path(".lrlab"), description="Where the embedded database, broker and files live.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite under data_dir.")
    broker_url: str = Field("", description="Celery broker URL; empty means a SQLite transport under data_dir.")
    dataset_root: Path | None = Field(
        None, description="Folder of users' own dataset files; default data_dir/datasets."
    )
    environment: str = Field("development", description="development | production")
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a worker reports it is alive.")
    heartbeat_ttl_seconds: float = Field(30.0, gt=0, description="A worker silent this long counts as gone.")
    broker_timeout_seconds: float = Field(3.0, gt=0, description="How long the API waits on the broker.")
    progress_flush_seconds: float = Field(
        0.5, ge=0, le=60, description="Epoch points are committed at most this often (a longer epoch: as it ends)."
    )
    # One thread per run: the small models this service trains spend more on thread hand-offs than they gain,
    # and an idle OpenMP thread spins on a core other runs need; scale CPU work with --concurrency instead.
    torch_threads: int = Field(1, ge=0, description="Torch threads per run; 0 leaves torch's default (all cores).")
    auth: Literal["required", "disabled"] = Field(
        "required", description="API keys; `lrlab up` on loopback turns them off."
    )
    max_active_runs_per_key: int = Field(
        100, ge=1, description="Queued + running runs (population members included) and lr-finder jobs of one owner."
    )
    max_request_work: float = Field(
        2e9, gt=0, description="Epochs x training samples one request may ask for, summed over its runs."
    )
    max_model_parameters: int = Field(
        DEFAULT_MAX_PARAMETERS, ge=1, description="Trainable parameters a `sequential` model may have (422 above)."
    )
    max_json_body_bytes: int = Field(1 << 20, ge=1024, description="Larger JSON request bodies get 413.")
    max_upload_bytes: int = Field(2 << 30, ge=1, description="Largest dataset file one upload may carry (413 above).")
    max_storage_bytes_per_key: int = Field(
        20 << 30, ge=1, description="Uploaded dataset bytes one owner may keep stored (429 above)."
    )
    max_extracted_bytes: int = Field(
        4 << 30, ge=1, description="Largest total an uploaded archive (.zip, .tar.gz, .npz) may expand to (413 above)."
    )
    max_compression_ratio: float = Field(
        200.0, gt=1, description="An archive member (or a .tar.gz) expanding over this x its packed size is refused."
    )
    idempotency_ttl_hours: float = Field(24.0, ge=24, description="How long an Idempotency-Key is remembered.")
    max_streams_per_key: int = Field(
        100, ge=1, description="Open event streams (GET /v1/runs/{id}/events) one key may hold on one API process."
    )
    max_streams_per_process: int = Field(
        1000, ge=1, description="Open event streams one API process serves at once, all keys together (429 above)."
    )
    events_keepalive_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="An idle event stream gets a comment this often; a revoked key's streams close within it.",
    )
    db_pool_size: int = Field(5, ge=1, description="Database connections each process keeps open (Postgres).")
    db_max_overflow: int = Field(
        30, ge=0, description="Connections a process may open beyond the pool under load (bursts of API requests)."
    )
    db_pool_timeout_seconds: float = Field(
        30.0, gt=0, description="How long a request waits for a free connection before a 503 with Retry-After."
    )
    db_keepalive_seconds: int = Field(
        30,
        ge=0,
        le=3600,
        description=(
            "Postgres probes an idle connection of ours after this many seconds, then 3 times 10 s apart, and drops"
            " a dead peer's (a host cut off mid-transaction: its row locks go with it). 0: the server's defaults."
        ),
    )
    lease_seconds: float = Field(30.0, gt=0, description="A running run whose worker is silent this long is requeued.")
    reconcile_seconds: float = Field(5.0, gt=0, description="How often each worker looks for lost or unsent runs.")
    redispatch_seconds: float = Field(
        600.0, gt=0, description="A queued run not picked up for this long has its message sent again."
    )
    checkpoint_seconds: float = Field(
        5.0, ge=0, description="Checkpoints are saved at most this often (0: every epoch)."
    )
    pbt_checkpoints: Literal["final", "all"] = Field(
        "final",
        description=(
            "What a finished population keeps in the checkpoint store: its members' last checkpoints (final), or"
            " every round's (all). A cancelled or failed population keeps none."
        ),
    )
    storage_url: str = Field(
        "",
        description=(
            "Where uploaded datasets and population checkpoints live: file:///path, or s3://bucket/prefix with the"
            " endpoint and credentials in the standard AWS_* variables (docs/storage.md). Empty: the data dir."
        ),
    )
    cache_max_bytes: int = Field(
        10 << 30, ge=0, description="Most bytes of stored datasets a worker keeps on its disk (least recently used go)."
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one object per line, with run_id.")
    metrics_token: SecretStr = Field(
        SecretStr(""),
        description="When set, /metrics (totals across every owner) answers only `Authorization: Bearer <this>`.",
    )

    @field_validator("database_url", "broker_url", "storage_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, v: str) -> str:
        if v:
            from lrlab.storage.keys import check_url

            check_url(v)  # ValueError saying what is wrong with it
        return v

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'lrlab.db'}"
        elif self.database_url.startswith(("postgres://", "postgresql://")):
            # psycopg 3 is the driver we ship; plain postgres URLs would pick psycopg2.
            self.database_url = "postgresql+psycopg://" + self.database_url.split("://", 1)[1]
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if self.dataset_root is None:
            self.dataset_root = self.data_dir / "datasets"
        self.dataset_root = self.dataset_root.expanduser().resolve()
        if not self.storage_url:
            self.storage_url = self.data_dir.as_uri()
        if self.environment == "production" and (self.is_embedded_db or self.is_embedded_broker):
            raise ValueError("production needs LRLAB_DATABASE_URL and LRLAB_BROKER_URL (Postgres, Redis)")
        return self

    @property
    def is_embedded_db(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def is_embedded_broker(self) -> bool:
        return self.broker_url.startswith("sqla+sqlite")

    @property
    def blob_dir(self) -> Path:
        """Uploaded files by content hash with the default storage (the data dir): lrlab.uploads.blobs."""
        return self.data_dir / "blobs"

    @property
    def staging_dir(self) -> Path:
        """Where the api writes an upload while it checks it (its own disk); deleted once the file is stored."""
        return self.data_dir / "staging"

    @property
    def upload_cache_dir(self) -> Path:
        """Where workers unpack uploaded datasets for the trainer, by content hash.

        It sits under dataset_root because the trainer opens user data only there; the leading dot keeps a
        run spec's `dataset.path` (which must start with a letter, digit or `_`) from naming it.
        """
        assert self.dataset_root is not None
        return self.dataset_root / ".uploads"

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        assert self.dataset_root is not None
        self.dataset_root.mkdir(parents=True, exist_ok=True)


@functools.cache
def get_settings() -> Settings:
    return Settings()
