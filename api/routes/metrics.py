"""/metrics in Prometheus text format: runs by status, queued runs per queue, live workers, epoch time, request
latency; behind a bearer token when LRLAB_METRICS_TOKEN is set (it shows totals across every owner)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Mount

from api.deps import SettingsDep
from api.errors import ApiError
from lrlab.db import session_scope
from lrlab.models import CurvePoint, Run, WorkerHeartbeat, utcnow
from lrlab.schemas.runs import RunStatus
from lrlab.settings import get_settings

router = APIRouter(tags=["health"])
REGISTRY = CollectorRegistry()
# Label values come from a fixed set, so no request can add a time series: a made-up method is "other", a path
# no route matches is "unmatched" (a matched one is labelled by its template, never by its ids).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"

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
        workers = GaugeMetricFamily(
            "lrlab_workers", "Live workers: a heartbeat within LRLAB_HEARTBEAT_TTL_SECONDS.", labels=["gpu"]
        )
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
            # A worker killed without its shutdown hook leaves its row behind: only fresh ones count.
            fresh = utcnow() - timedelta(seconds=get_settings().heartbeat_ttl_seconds)
            live = dict(
                s.execute(
                    select(WorkerHeartbeat.has_gpu, func.count())
                    .where(WorkerHeartbeat.last_seen_at >= fresh)
                    .group_by(WorkerHeartbeat.has_gpu)
                ).all()
            )
            for has_gpu in (True, False):
                workers.add_metric([str(has_gpu).lower()], live.get(has_gpu, 0))
            total, n = s.execute(select(func.coalesce(func.sum(CurvePoint.seconds), 0.0), func.count())).one()
        epochs.add_metric([], float(total))
        yield runs
        yield depth
        yield workers
        yield epochs
        yield CounterMetricFamily("lrlab_epochs", "Stored training epochs.", value=n)


REGISTRY.register(StoreCollector())


_bearer = HTTPBearer(auto_error=False, description="LRLAB_METRICS_TOKEN, when the operator set one.")


def _scraper(settings: SettingsDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """With LRLAB_METRICS_TOKEN set, only a caller sending it may read /metrics; API keys do not open it."""
    token = settings.metrics_token.get_secret_value()
    if not token:
        return
    if creds is None:
        error = ApiError(401, ["header", "authorization"], "missing token: send Authorization: Bearer <metrics token>")
    elif not hmac.compare_digest(creds.credentials.encode(), token.encode()):
        error = ApiError(401, ["header", "authorization"], "wrong metrics token (LRLAB_METRICS_TOKEN)")
    else:
        return
    error.type = "unauthorized"
    error.headers["WWW-Authenticate"] = "Bearer"
    raise error


@router.get(
    "/metrics",
    response_class=Response,
    include_in_schema=True,
    dependencies=[Depends(_scraper)],
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
        401: {"description": "LRLAB_METRICS_TOKEN is set and the request did not send it"},
    },
)
def metrics() -> Response:
    """Prometheus metrics, totals across every owner; with LRLAB_METRICS_TOKEN set, send it as a bearer token."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def request_labels(method: str, route: object, status: int) -> tuple[str, str, str]:
    """(method, route template, status) from fixed sets: an unknown method or path adds no time series."""
    template = getattr(route, "path", None)
    return (
        method if method in METHODS else OTHER_METHOD,
        template if isinstance(template, str) else UNMATCHED_ROUTE,
        str(status),
    )


def _matched(request: Request) -> object:
    """The route that served the request; a mount (the docs' assets) leaves only its app in the scope."""
    route = request.scope.get("route")
    if route is None and (app := request.scope.get("endpoint")) is not None:
        route = next((r for r in request.app.routes if isinstance(r, Mount) and r.app is app), None)
    return route


async def time_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    start = time.perf_counter()
    response = await call_next(request)
    labels = request_labels(request.method, _matched(request), response.status_code)
    REQUEST_SECONDS.labels(*labels).observe(time.perf_counter() - start)
    return response
