"""The Celery wiring both sides share: app config, task names, the queue a run goes to, the queues live workers
serve, whether the broker answers. Messages are sent only by lrlab/outbox.py."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab.models import WorkerHeartbeat, utcnow
from lrlab.settings import Settings, get_settings

TRAIN_RUN = "lrlab.train_run"
FIND_LR = "lrlab.find_lr"
TRAIN_PACK = "lrlab.train_pack"
TRAIN_PBT = "lrlab.train_pbt"
ADVANCE_SEARCH = "lrlab.advance_search"
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"


def make_celery(settings: Settings | None = None, name: str = "lrlab") -> Celery:
    """A Celery app configured for lrlab; the api uses it only to send tasks by name (no torch import)."""
    settings = settings or get_settings()
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=CPU_QUEUE,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.broker_timeout_seconds,
        # Redis redelivers an unacked task after visibility_timeout; a long run must not be redelivered
        # while it is still training (the worker's lease decides that), so keep it above any run.
        broker_transport_options=_transport_options(settings),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if settings.is_embedded_broker:
        _fast_sqlite_polling()
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": 12 * 3600, "socket_timeout": settings.broker_timeout_seconds}
    return {}


def _fast_sqlite_polling() -> None:
    # kombu's SQLAlchemy transport polls its table once a second and forwards every transport
    # option to create_engine (so polling_interval can't go there): set the class attribute.
    from kombu.transport.sqlalchemy import Transport

    Transport.polling_interval = 0.2


def has_live_gpu_worker(session: Session, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    fresh = utcnow() - timedelta(seconds=settings.heartbeat_ttl_seconds)
    found = session.scalars(
        select(WorkerHeartbeat.hostname).where(WorkerHeartbeat.has_gpu, WorkerHeartbeat.last_seen_at >= fresh).limit(1)
    ).first()
    return found is not None


def live_queues(session: Session, settings: Settings | None = None) -> frozenset[str]:
    """The queues some worker with a fresh heartbeat serves right now."""
    settings = settings or get_settings()
    fresh = utcnow() - timedelta(seconds=settings.heartbeat_ttl_seconds)
    rows = session.scalars(select(WorkerHeartbeat.queues).where(WorkerHeartbeat.last_seen_at >= fresh))
    return frozenset(name for row in rows for name in row.split(",") if name)


def waiting_reason(queue_name: str, live: frozenset[str]) -> str | None:
    """Why a run queued on `queue_name` is not picked up, or None when a live worker serves that queue."""
    if queue_name in live:
        return None
    if queue_name == GPU_QUEUE:
        return (
            "no live GPU worker: the run waits on the gpu queue until a worker serving it starts"
            " (`lrlab worker --queues gpu` on a machine with a GPU); to train on a CPU instead, cancel it and"
            ' submit it again with "device": "cpu" or "auto"'
        )
    return (
        f"no live worker serves the {queue_name} queue: the run waits until one starts"
        f" (`lrlab worker --queues {queue_name}`, or `lrlab up`)"
    )


def choose_queue(session: Session, device: str) -> str:
    """`cuda` always waits for a GPU worker; `auto` takes one only if a GPU worker is alive now."""
    if device == "cuda":
        return GPU_QUEUE
    if device == "auto" and has_live_gpu_worker(session):
        return GPU_QUEUE
    return CPU_QUEUE


_client: Celery | None = None


def client() -> Celery:
    global _client
    if _client is None:
        _client = make_celery()
    return _client


def reset_client() -> None:
    global _client
    _client = None


def ensure_broker() -> None:
    """Raise (kombu OperationalError: the API answers 503) if the broker can't be reached right now."""
    with client().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=client().conf.broker_connection_timeout)
