"""Builds the FastAPI app: routers, error handlers, the gate (key, content type, size), the OpenAPI errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api import errors, openapi
from api.events import EventHub
from api.gate import Gate
from api.routes import (
    advice,
    catalog,
    compare,
    dashboard,
    datasets,
    events,
    experiments,
    health,
    lr_finder,
    metrics,
    pbt,
    runs,
    searches,
)
from lrlab import __version__
from lrlab.settings import get_settings

DOCS_ASSETS = "/static/docs"  # Swagger UI's and ReDoc's scripts and styles
DESCRIPTION = """
Learning-rate and optimizer experiments: submit runs, grids and lr range tests; get curves, comparisons
and charts.

**Keys.** Send `Authorization: Bearer <key>` (keys come from `lrlab keys create`); `lrlab up` on loopback
needs none. Another owner's runs, experiments and jobs answer 404 and never appear in lists.

**Limits** (defaults; set by the operator):
- Request bodies: at most 1 MiB (`LRLAB_MAX_JSON_BODY_BYTES`) — 413 above; a JSON endpoint takes
  `Content-Type: application/json` only — 415 otherwise. Dataset uploads (multipart) are
  not JSON: one file at most 2 GiB (`LRLAB_MAX_UPLOAD_BYTES`) — 413; an archive expanding past 4 GiB
  (`LRLAB_MAX_EXTRACTED_BYTES`) — 413; uploads stored per key at most 20 GiB (`LRLAB_MAX_STORAGE_BYTES_PER_KEY`) — 429.
- A grid: at most 256 cells — 422 above (invalid input, not a quota).
- Active (queued + running) runs per key: 100 (`LRLAB_MAX_ACTIVE_RUNS_PER_KEY`) — 429 with `Retry-After`.
- Work of one request, epochs × training samples summed over its runs: 2e9 (`LRLAB_MAX_REQUEST_WORK`) — 429.
- `Idempotency-Key` on any POST: the same key and body replay the first answer for at least 24 h; the
  same key with another body is a 409.
- The database or broker unavailable: 503 with `Retry-After`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.events = EventHub()
    app.state.events.start(asyncio.get_running_loop())
    yield
    app.state.events.stop()


def create_app() -> FastAPI:
    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package, not a CDN: they work offline.
    app = FastAPIOffline(
        title="lrlab",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        favicon_url="/static/icon.svg",
        static_url=DOCS_ASSETS,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(catalog.router)
    app.include_router(runs.router)
    app.include_router(datasets.router)
    app.include_router(events.router)
    app.include_router(experiments.router)
    app.include_router(compare.router)
    app.include_router(lr_finder.router)
    app.include_router(pbt.router)
    app.include_router(searches.router)
    app.include_router(advice.router)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.assets(), name="dashboard-assets")  # after /static/docs: that mount comes first
    app.add_middleware(Gate, max_json_bytes=lambda: get_settings().max_json_body_bytes)
    app.middleware("http")(metrics.time_requests)  # outermost: it times the gate's refusals too
    openapi.install(app)
    return app


app = create_app()
