"""The dashboard: HTML pages (one shell that the script renders from the path) and their static assets."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from api.errors import ApiError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "dashboard"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# The pages hold no data, so they need no key; the script's calls to /v1 carry it.
PAGES = (
    "/",
    "/runs/{run_id}",
    "/experiments/{experiment_id}",
    "/compare",
    "/lr-finder/{job_id}",
    "/pbt/{pbt_id}",
    "/datasets/{dataset_id}",
)
# Revalidate on every load (the ETag makes that a 304), so a new release is never mixed with a cached script.
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@cache
def _shell() -> str:
    return (ASSETS_DIR / "index.html").read_text(encoding="utf-8")


def page() -> HTMLResponse:
    return HTMLResponse(_shell(), headers=NO_CACHE)


for _path in PAGES:
    router.add_api_route(_path, page, methods=["GET", "HEAD"], response_class=HTMLResponse)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
def asset(name: Annotated[str, PathParam(pattern=r"^[a-z][a-z0-9_-]*\.(js|css|svg)$")]) -> FileResponse:
    """Only files that sit in the dashboard folder by that exact name: the pattern keeps paths out."""
    path = ASSETS_DIR / name
    if not path.is_file():
        raise ApiError(404, ["path", "name"], f"no dashboard asset {name}", "not_found")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=NO_CACHE)
