"""/metrics in Prometheus text format: runs by status, queued runs per queue, epoch time, request latency."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from lrlab.db import session_scope
from lrlab.models import CurvePoint, Run, WorkerHeartbeat
from lrlab.schemas.runs import RunStatus

router = APIRouter(tags=["health"])
REGISTRY = CollectorRegistry()

REQUEST_SECONDS = Histogram(
    "lrlab_http_request_seconds",
    "HTTP request latency by route template.",
    ["method", "route", "status"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class StoreCollector(Collector):
    """Read from the database at scrape time, so every api replica reports the same numbers."""

    def collect(self) -> Iterator[Any]:
        runs = GaugeMetricFamily("lrlab_runs", "Runs by status.", labels=["status"])
        depth = GaugeMetricFamily("lrlab_queue_depth", "Queued runs waiting per Celery queue.", labels=["queue"])
        workers = GaugeMetricFamily("lrlab_workers", "Workers with a fresh heartbeat row.", labels=["gpu"])
        epochs = CounterMetricFamily("lrlab_epoch_seconds", "Wall time of stored training epochs.")
        with session_scope() as s:
            counts = dict(s.execute(select(Run.status, func.count()).group_by(Run.status)).all())
            for st in RunStatus:
                runs.add_metric([st.value], counts.get(st.value, 0))
            queued = s.execute(
                select(Run.queue, func.count()).where(Run.status == RunStatus.queued.value).group_by(Run.queue)
            ).all()
            for queue_name, n in queued:
                depth.add_metric([queue_name], n)
            for has_gpu, n in s.execute(
                select(WorkerHeartbeat.has_gpu, func.count()).group_by(WorkerHeartbeat.has_gpu)
            ):
                workers.add_metric([str(bool(has_gpu)).lower()], n)
            total, n = s.execute(select(func.coalesce(func.sum(CurvePoint.seconds), 0.0), func.count())).one()
        epochs.add_metric([], float(total))
        yield runs
        yield depth
        yield workers
        yield epochs
        yield CounterMetricFamily("lrlab_epochs", "Stored training epochs.", value=n)


REGISTRY.register(StoreCollector())


@router.get("/metrics", response_class=Response, include_in_schema=True)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def time_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    start = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "unmatched")
    REQUEST_SECONDS.labels(request.method, template, str(response.status_code)).observe(time.perf_counter() - start)
    return response
