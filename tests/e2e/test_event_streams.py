"""Event streams under load, over a real `lrlab api` (uvicorn) on the test database: no pooled connection held
while a stream waits, caps per key and per process (429), a revoked key's stream closed, an exhausted pool a 503.

The runs streamed here ask for a GPU, so no worker takes them: the test writes their points itself (the same
upsert as a worker, which fires the same NOTIFY) and ends them by cancelling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT, make_key, stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http

pytestmark = pytest.mark.service

KEEPALIVE = 1.0  # LRLAB_EVENTS_KEEPALIVE_SECONDS of the servers started here


@contextmanager
def api_server(service_env: dict[str, str], **settings: str) -> Iterator[str]:
    """`lrlab api` in a subprocess on the test database with extra LRLAB_* settings; yields its base URL."""
    port = _free_port()
    env = {**os.environ, **service_env, "LRLAB_EVENTS_KEEPALIVE_SECONDS": str(KEEPALIVE), **settings}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrlab.cli", "api", "--port", str(port), "--loglevel", "WARNING"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _http("GET", f"{base}/healthz")[0] == 200, 60, "lrlab api", interval=0.3)
        yield base
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def server(service_env: dict[str, str]) -> Iterator[str]:
    """One `lrlab api` with the default caps and pool, a keep-alive every KEEPALIVE seconds."""
    with api_server(service_env) as base:
        yield base


class Sse:
    """One GET /v1/runs/{id}/events, read on a thread of its own."""

    def __init__(self, base: str, run_id: str, key: str) -> None:
        self.url, self.key = f"{base}/v1/runs/{run_id}/events", key
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.body: Any = None  # the JSON of an answer that is not a stream
        self.events: list[tuple[str, Any]] = []
        self.error: BaseException | None = None
        self.answered, self.ended = threading.Event(), threading.Event()
        self.ended_at: float | None = None
        self._leave = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            timeout = httpx.Timeout(10.0, read=10 * KEEPALIVE)  # keep-alives come every KEEPALIVE seconds
            headers = {"Authorization": f"Bearer {self.key}"}
            with httpx.Client(timeout=timeout) as client, client.stream("GET", self.url, headers=headers) as resp:
                self.status, self.headers = resp.status_code, resp.headers
                if resp.status_code != 200:
                    self.body = json.loads(resp.read())
                    return
                self.answered.set()
                kind = ""
                for line in resp.iter_lines():
                    if self._leave:
                        return
                    if line.startswith("event: "):
                        kind = line[len("event: ") :]
                    elif line.startswith("data: "):
                        self.events.append((kind, json.loads(line[len("data: ") :])))
        except Exception as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.answered.set()
            self.ended.set()

    def leave(self) -> None:
        """Hang up (at the next line the server sends: a keep-alive at the latest)."""
        self._leave = True

    def epochs(self) -> list[int]:
        return [data["epoch"] for kind, data in self.events if kind == "point"]


def open_streams(base: str, run_id: str, key: str, n: int) -> list[Sse]:
    streams = [Sse(base, run_id, key) for _ in range(n)]
    for s in streams:
        assert s.answered.wait(30), "a stream got no answer in 30 s"
    return streams


def submit_waiting_run(base: str, key: str) -> str:
    """A run no worker takes (it waits for a GPU worker): its points come from write_points."""
    headers = {"Authorization": f"Bearer {key}"}
    resp = httpx.post(f"{base}/v1/runs", json={"dataset": "blobs", "epochs": 50, "device": "cuda"}, headers=headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def write_points(run_id: str, epochs: range) -> None:
    from lrlab.db import session_scope
    from lrlab.runs import store

    for epoch in epochs:
        with session_scope() as s:  # one commit (and one NOTIFY) per epoch, as a worker's writer does
            store.upsert_points(s, run_id, [{"epoch": epoch, "train_loss": 1 / epoch, "lr": 0.1, "seconds": 0.01}])


def cancel(base: str, run_id: str, key: str) -> None:
    resp = httpx.post(f"{base}/v1/runs/{run_id}/cancel", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text


def timed_get(url: str, key: str) -> tuple[int, float]:
    t0 = time.monotonic()
    resp = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return resp.status_code, time.monotonic() - t0


def test_sixty_streams_on_one_run_leave_the_api_answering(server: str) -> None:
    key, base = make_key("sixty streams"), server
    run_id = submit_waiting_run(base, key)
    with ThreadPoolExecutor(60) as pool:  # opened all at once, as 60 dashboards would
        streams = list(pool.map(lambda _: Sse(base, run_id, key), range(60)))
    wait_for(lambda: all(s.events or s.ended.is_set() for s in streams), 40, "a first event on every stream")
    assert all(s.status == 200 and s.error is None for s in streams), {(s.status, repr(s.error)) for s in streams}
    assert all(s.events[0] == ("status", {"status": "queued"}) for s in streams)

    status, seconds = timed_get(f"{base}/v1/runs?limit=50", key)
    assert status == 200 and seconds < 2.0, (status, seconds)

    write_points(run_id, range(1, 6))  # every stream is woken five times and reads only what is new
    wait_for(lambda: all(s.epochs() == [1, 2, 3, 4, 5] for s in streams), 30, "the points on every stream")
    status, seconds = timed_get(f"{base}/v1/runs?limit=50", key)
    assert status == 200 and seconds < 2.0, (status, seconds)

    cancel(base, run_id, key)
    for s in streams:
        assert s.ended.wait(30) and s.error is None, s.error
        assert s.epochs() == [1, 2, 3, 4, 5] and s.events[-1] == ("status", {"status": "cancelled"})


def test_streams_on_a_long_curve_replay_it_whole_then_follow(server: str) -> None:
    from api.events import TAIL

    key, base = make_key("long curve"), server
    run_id = submit_waiting_run(base, key)
    write_points(run_id, range(1, TAIL + 45))  # longer than the tail a run's feed keeps
    (early,) = open_streams(base, run_id, key, 1)
    wait_for(lambda: len(early.epochs()) == TAIL + 44, 20, "the first stream's replay")
    (late,) = open_streams(base, run_id, key, 1)  # the feed is warm now, but its tail starts after epoch 44
    wait_for(lambda: len(late.epochs()) == TAIL + 44, 20, "the second stream's replay")
    write_points(run_id, range(TAIL + 45, TAIL + 47))
    whole = list(range(1, TAIL + 47))
    wait_for(lambda: early.epochs() == whole and late.epochs() == whole, 20, "both streams to follow")
    cancel(base, run_id, key)
    assert early.ended.wait(10) and late.ended.wait(10)
    assert early.epochs() == late.epochs() == whole  # in order, none twice


def test_stream_caps_per_key_and_per_process(service_env: dict[str, str]) -> None:
    first, second = make_key("streams a"), make_key("streams b")
    # A one-connection pool: three open streams would leave no connection for anything else if they held one.
    settings = {
        "LRLAB_MAX_STREAMS_PER_KEY": "2",
        "LRLAB_MAX_STREAMS_PER_PROCESS": "3",
        "LRLAB_DB_POOL_SIZE": "1",
        "LRLAB_DB_MAX_OVERFLOW": "0",
        "LRLAB_DB_POOL_TIMEOUT_SECONDS": "5",
    }
    with api_server(service_env, **settings) as base:
        run_a, run_b = submit_waiting_run(base, first), submit_waiting_run(base, second)
        a1, a2 = open_streams(base, run_a, first, 2)
        (over_key,) = open_streams(base, run_a, first, 1)
        assert (a1.status, a2.status, over_key.status) == (200, 200, 429)
        assert over_key.headers is not None and int(over_key.headers["retry-after"]) > 0
        (item,) = over_key.body["detail"]
        assert item["loc"] == ["header", "authorization"] and "LRLAB_MAX_STREAMS_PER_KEY" in item["msg"]

        (b1,) = open_streams(base, run_b, second, 1)
        (over_process,) = open_streams(base, run_b, second, 1)  # this key has one, the process three
        assert b1.status == 200 and over_process.status == 429
        assert over_process.headers is not None and "retry-after" in over_process.headers
        assert over_process.body["detail"][0]["loc"] == ["server"]

        status, seconds = timed_get(f"{base}/v1/runs", first)  # the one pooled connection is free
        assert status == 200 and seconds < 2.0, (status, seconds)

        a1.leave()  # a slot comes free once the server notices (its next keep-alive at the latest)
        assert a1.ended.wait(10 * KEEPALIVE)

        def reopened() -> Sse | None:
            (again,) = open_streams(base, run_a, first, 1)
            return again if again.status == 200 else None

        again = wait_for(reopened, 10 * KEEPALIVE, "a freed stream slot", interval=0.2)
        write_points(run_a, range(1, 3))
        wait_for(lambda: again.epochs() == [1, 2] and a2.epochs() == [1, 2], 10, "points on both open streams")
        cancel(base, run_a, first)
        cancel(base, run_b, second)
        for s in (a2, again, b1):
            assert s.ended.wait(10) and s.events[-1] == ("status", {"status": "cancelled"})


def test_revoked_key_stream_closes_within_a_keepalive(server: str) -> None:
    from lrlab import auth
    from lrlab.db import session_scope

    key, other, base = make_key("revoked while streaming"), make_key("stays"), server
    run_id, kept_run = submit_waiting_run(base, key), submit_waiting_run(base, other)
    (stream,) = open_streams(base, run_id, key, 1)
    (kept,) = open_streams(base, kept_run, other, 1)
    assert stream.status == kept.status == 200
    wait_for(lambda: stream.events and kept.events, 10, "the first events")
    with session_scope() as s:
        assert auth.revoke_key(s, "revoked while streaming") == 1
    revoked_at = time.monotonic()
    assert stream.ended.wait(3 * KEEPALIVE + 2), "the revoked key's stream is still open"
    assert stream.ended_at is not None and stream.ended_at - revoked_at < 2 * KEEPALIVE + 1
    kind, data = stream.events[-1]
    assert kind == "error" and data["detail"][0]["loc"] == ["header", "authorization"]
    assert not kept.ended.is_set()  # another key's stream goes on
    write_points(kept_run, range(1, 2))
    wait_for(lambda: kept.epochs() == [1], 10, "a point on the other key's stream")
    cancel(base, kept_run, other)
    assert kept.ended.wait(10)


@contextmanager
def settings_env(**values: str) -> Iterator[None]:
    """This process's settings with these LRLAB_* values (engines and settings rebuilt), restored afterwards."""
    from lrlab import db

    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    db.reset_caches()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        db.reset_caches()


TINY_POOL = {"LRLAB_DB_POOL_SIZE": "1", "LRLAB_DB_MAX_OVERFLOW": "0", "LRLAB_DB_POOL_TIMEOUT_SECONDS": "0.3"}


@pytest.mark.parametrize("auth", ["required", "disabled"])  # the key checked at the edge, or no key at all
def test_exhausted_pool_is_a_503_with_retry_after(service_env: dict[str, str], api_key: str, auth: str) -> None:
    from api.main import create_app
    from lrlab.db import get_engine

    headers = {"Authorization": f"Bearer {api_key}"}
    with settings_env(**TINY_POOL, LRLAB_AUTH=auth), TestClient(create_app(), headers=headers) as client:
        assert client.get("/v1/runs").status_code == 200
        held = get_engine().connect()  # the pool's only connection, busy elsewhere
        try:
            held.exec_driver_sql("SELECT 1")
            answers: list[Callable[[], httpx.Response]] = [
                lambda: client.get("/v1/runs"),
                lambda: client.get("/v1/runs/no-such-run/events"),
                lambda: client.post("/v1/runs", json={"dataset": "blobs", "epochs": 1}),
            ]
            for answer in answers:
                resp = answer()
                assert resp.status_code == 503, resp.text
                assert int(resp.headers["retry-after"]) > 0
                (item,) = resp.json()["detail"]
                assert item["loc"] == ["database"] and item["type"] == "service_unavailable"
        finally:
            held.close()
        assert client.get("/v1/runs").status_code == 200
