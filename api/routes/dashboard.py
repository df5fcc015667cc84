"""The dashboard: HTML pages (one shell that the script renders from the path) and its assets (Starlette's
StaticFiles over api/dashboard/static/, mounted at /static by api/main.py)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# The pages hold no data, so they need no key; the script's calls to /v1 carry it.
PAGES = (
    "/",
    "/runs/{run_id}",
    "/experiments/{experiment_id}",
    "/compare",
    "/lr-finder/{job_id}",
    "/pbt/{pbt_id}",
    "/searches/{search_id}",
    "/advice/{advice_id}",
    "/datasets/{dataset_id}",
)
# Revalidate on every load (the ETag makes that a 304), so a new release is never mixed with a cached script.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@cache
def _shell() -> str:
    return (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")


def page() -> HTMLResponse:
    return HTMLResponse(_shell(), headers=NO_CACHE)


for _path in PAGES:
    router.add_api_route(_path, page, methods=["GET", "HEAD"], response_class=HTMLResponse)


class Assets(StaticFiles):
    """The scripts, styles and icon, each revalidated on every load (a 304 while unchanged)."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_CACHE)
        return response


def assets() -> Assets:
    return Assets(directory=DASHBOARD_DIR / "static")
