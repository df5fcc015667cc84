"""Live progress: GET /v1/runs/{id}/events as server-sent events, until the run ends."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from api.deps import OwnerDep, RunDep, SessionDep
from api.errors import ApiError, detail
from api.events import EventHub, Stream, StreamLimit
from lrlab.schemas.runs import RunStatus

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/runs", tags=["runs"])
RETRY_AFTER_SECONDS = 10  # a slot frees when some stream ends: no better guess exists
CLOSE_LIMITER = anyio.CapacityLimiter(8)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


async def _events(hub: EventHub, stream: Stream, request: Request) -> AsyncIterator[str]:
    last_epoch, last_status = 0, None
    while True:
        stream.wake.clear()  # then count the changes: one notified after this wakes the next wait at once
        changes = stream.feed.changes
        if stream.revoked:
            yield _sse("error", detail(["header", "authorization"], "the API key was revoked", "unauthorized"))
            return
        try:
            points, status, more = await hub.since(stream, last_epoch, changes)
        except SQLAlchemyError as exc:  # down or busy: the stream stays open and reads again at the next wake
            log.warning("event stream for run %s could not read the store: %s", stream.feed.run_id, exc)
        else:
            if points:  # one chunk for what one read brought, not one send per point
                yield "".join(_sse("point", p) for p in points)
                last_epoch = points[-1]["epoch"]
            if more:  # a long curve, a page at a time: the next page now
                if await request.is_disconnected():
                    return
                continue
            if status != last_status:
                yield _sse("status", {"status": status})
                last_status = status
            if RunStatus(status).is_finished():
                return
        if await request.is_disconnected():
            return
        try:
            await asyncio.wait_for(stream.wake.wait(), timeout=hub.keepalive_seconds)
        except TimeoutError:
            yield ": keep-alive\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that counts its stream out of the hub however it ends."""

    def __init__(self, hub: EventHub, stream: Stream, request: Request) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(_events(hub, stream, request), media_type="text/event-stream", headers=headers)
        self.hub, self.stream = hub, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.close(self.stream)


def _too_many(exc: StreamLimit) -> ApiError:
    if exc.per == "key":
        loc = ["header", "authorization"]
        msg = f"this key has {exc.limit} event streams open on this server (LRLAB_MAX_STREAMS_PER_KEY)"
    else:
        loc, msg = ["server"], f"this server has {exc.limit} event streams open (LRLAB_MAX_STREAMS_PER_PROCESS)"
    error = ApiError(429, loc, f"{msg}: close one, or poll GET /v1/runs/{{id}}/curves", "too_many_streams")
    error.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return error


@router.get(
    "/{run_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "point and status events"},
        429: {"description": "Too many open event streams, for this key or on this server; retry after Retry-After."},
    },
)
async def run_events(run: RunDep, owner: OwnerDep, session: SessionDep, request: Request) -> StreamingResponse:
    """The points stored so far, then one `point` event per new epoch and a `status` event per change; ends
    when the run ends. Each `data:` line is one JSON object. If the key is revoked, one `error` event (the error
    shape) ends the stream within a keep-alive interval."""
    # Dependencies with yield exit when the response has been sent — for a stream, when the run ends. Give the
    # session's connection back now (the same session RunDep loaded with), or every open stream would hold one.
    # Not through the request threadpool: with its threads all waiting for a connection (a burst of requests),
    # this close would wait for a thread while holding the connection they wait for (FastAPI closes dependencies
    # outside that pool for the same reason).
    await anyio.to_thread.run_sync(session.close, limiter=CLOSE_LIMITER)
    hub: EventHub = request.app.state.events
    try:
        stream = hub.open(run.id, owner)
    except StreamLimit as exc:
        raise _too_many(exc) from exc
    return EventStream(hub, stream, request)
