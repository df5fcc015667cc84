"""The event hub replays a long curve a page at a time (api/events.py): every point once, in order, then the
status, and no read of the store brings more than a page. Real Postgres; the hub driven in this process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api import events
from lrlab.db import session_scope
from lrlab.runs import store
from tests.rows import new_run, set_run

pytestmark = pytest.mark.service


def write_curve(run_id: str, epochs: range) -> None:
    with session_scope() as s:
        store.upsert_points(s, run_id, [{"epoch": e, "val_loss": 1.0 / e, "lr": 0.1, "seconds": 0.01} for e in epochs])


def replay(run_id: str, after_epoch: int = 0) -> list[tuple[list[int], str, bool]]:
    """What a stream is handed, call after call, until it has every point and a final status."""

    async def go() -> list[tuple[list[int], str, bool]]:
        hub = events.EventHub()
        stream = hub.open(run_id, "local")
        got, last = [], after_epoch
        try:
            while True:
                points, status, more = await hub.since(stream, last, stream.feed.changes)
                got.append(([p["epoch"] for p in points], status, more))
                last = points[-1]["epoch"] if points else last
                if not more:
                    return got
        finally:
            hub.close(stream)

    return asyncio.run(go())


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of points each read of the store returned."""
    seen: list[int] = []
    real = store.points

    def counted(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        out = real(*args, **kwargs)
        seen.append(len(out))
        return out

    monkeypatch.setattr(store, "points", counted)
    return seen


def test_long_curve_is_replayed_a_page_at_a_time(service_env: dict[str, str], reads: list[int]) -> None:
    run_id = new_run("q-events", status="succeeded")
    n = 2 * events.PAGE + 345
    write_curve(run_id, range(1, n + 1))
    calls = replay(run_id)
    epochs = [e for chunk, _, _ in calls for e in chunk]
    assert epochs == list(range(1, n + 1))  # each once, in order
    assert [more for _, _, more in calls] == [True, True, False]
    assert calls[-1][1] == "succeeded"
    assert max(reads) <= events.PAGE + 1  # the feed's own refresh reads only the newest TAIL (+1)


def test_resumed_stream_reads_only_after_its_epoch(service_env: dict[str, str], reads: list[int]) -> None:
    run_id = new_run("q-events", status="running")
    write_curve(run_id, range(1, events.PAGE + 11))
    calls = replay(run_id, after_epoch=events.PAGE - 5)
    assert [e for chunk, _, _ in calls for e in chunk] == list(range(events.PAGE - 4, events.PAGE + 11))
    assert calls[-1][1:] == ("running", False)
    set_run(run_id, status="cancelled")


def test_feed_keeps_only_the_newest_points_of_a_long_curve(service_env: dict[str, str], reads: list[int]) -> None:
    run_id = new_run("q-events", status="running")
    write_curve(run_id, range(1, 3 * events.TAIL))

    async def go() -> events.Feed:
        hub = events.EventHub()
        stream = hub.open(run_id, "local")
        await hub.since(stream, 3 * events.TAIL - 1, stream.feed.changes)  # a stream already up to date
        return stream.feed

    feed = asyncio.run(go())
    assert [p["epoch"] for p in feed.tail] == list(range(2 * events.TAIL, 3 * events.TAIL))
    assert reads == [events.TAIL + 1] and feed.covers(2 * events.TAIL - 1) and not feed.covers(10)
