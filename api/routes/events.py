"""Live progress: GET /v1/runs/{id}/events as server-sent events, until the run ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.deps import RunDep
from lrlab import store
from lrlab.db import session_scope
from lrlab.models import Run
from lrlab.schemas.runs import RunStatus

router = APIRouter(prefix="/v1/runs", tags=["runs"])
KEEPALIVE_SECONDS = 15.0


def _read(run_id: str, after_epoch: int) -> tuple[list[dict[str, Any]], str]:
    with session_scope() as s:
        pts = [p for p in store.points(s, run_id) if p["epoch"] > after_epoch]
        run = s.get(Run, run_id)
        return pts, run.status if run is not None else RunStatus.failed.value


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "point and status events"}},
)
async def run_events(run: RunDep, request: Request) -> StreamingResponse:
    """The points stored so far, then one `point` event per new epoch and a `status` event per change; ends
    when the run ends. Each `data:` line is one JSON object."""
    hub = request.app.state.events
    run_id = run.id

    async def stream() -> AsyncIterator[str]:
        wake = hub.subscribe(run_id)  # before the first read: no change can slip between read and wait
        last_epoch, last_status = 0, None
        try:
            while True:
                wake.clear()
                pts, status = await run_in_threadpool(_read, run_id, last_epoch)
                for p in pts:
                    yield _sse("point", p)
                    last_epoch = p["epoch"]
                if status != last_status:
                    yield _sse("status", {"status": status})
                    last_status = status
                if RunStatus(status).is_finished() or await request.is_disconnected():
                    return
                try:
                    await asyncio.wait_for(wake.wait(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
        finally:
            hub.unsubscribe(run_id, wake)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
