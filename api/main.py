"""Builds the FastAPI app: routers and error handlers; nothing else lives here."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routes import catalog, compare, experiments, health, lr_finder, runs
from lrlab import __version__


def create_app() -> FastAPI:
    app = FastAPI(
        title="lrlab",
        version=__version__,
        summary="Learning-rate and optimizer experiments: submit runs, get curves.",
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(catalog.router)
    app.include_router(runs.router)
    app.include_router(experiments.router)
    app.include_router(compare.router)
    app.include_router(lr_finder.router)
    return app


app = create_app()
