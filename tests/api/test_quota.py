"""The active quota under concurrency, through a real API server: never over the limit, never a 5xx.

Runs, grid cells, population members and lr-finder jobs all count in one budget (queued + running). Every
request here asks for `device: cuda`, which no worker of the test session serves: what is accepted stays
queued, so the count at the end is exactly what was let in.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from lrlab import auth
from lrlab.db import get_sessionmaker, session_scope
from lrlab.models import LOCAL_OWNER, LrFinder, Run
from lrlab.runs import quotas
from tests.conftest import ROOT, make_key, stop_process, wait_for

LIMIT = 10
RUN = {"dataset": "spirals", "epochs": 1, "device": "cuda"}
LR_FINDER = {"dataset": "spirals", "steps": 10, "device": "cuda"}


def pbt(population: int) -> dict[str, Any]:
    return {
        "name": "quota",
        "base": {"dataset": "spirals", "device": "cuda"},
        "population": population,
        "epochs": 2,
        "interval": 1,
        "mutations": {"lr": {"log_uniform": [1e-3, 1e-1]}},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """`lrlab api` in its own process with environment `env` (uvicorn: one process, whose thread pool serves
    requests concurrently)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lrlab.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "LRLAB_MAX_ACTIVE_RUNS_PER_KEY": str(LIMIT)},
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError("the api exited:\n" + log.read_text()[-3000:])
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        return False

    try:
        wait_for(up, 60, "the api server", interval=0.3)
        yield base
    finally:
        stop_process(proc)


def burst(url: str, bodies: list[dict[str, Any]], key: str | None = None) -> list[httpx.Response]:
    """POST every body at once (64 client threads); every answer."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url, json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(64) as pool:
        return list(pool.map(post, bodies))


def accepted(responses: list[httpx.Response]) -> int:
    """How many were 202; every other answer must be a 429 with Retry-After, never a 5xx."""
    for resp in responses:
        assert resp.status_code in (202, 429), resp.text
        if resp.status_code == 429:
            assert resp.headers["Retry-After"] and resp.json()["detail"][0]["type"] == "quota_exceeded"
    return sum(r.status_code == 202 for r in responses)


# --- Postgres and Redis ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_api(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with api_server({**os.environ, **service_env}, tmp_path_factory.mktemp("quota") / "api.log") as base:
        yield base


@pytest.fixture
def key(pg_api: str) -> Iterator[str]:
    """A fresh key (its own owner); whatever it left active is cancelled afterwards."""
    plain = make_key("quota")
    yield plain
    with session_scope() as s:
        owner = auth.owner_of(s, plain)
        for model in (Run, LrFinder):
            s.execute(
                update(model).where(model.owner == owner, model.status.in_(quotas.ACTIVE)).values(status="cancelled")
            )


def active(key: str) -> int:
    with session_scope() as s:
        owner = auth.owner_of(s, key)
        assert owner is not None
        return quotas.active(s, owner)


@pytest.mark.service
def test_concurrent_runs_from_one_key_never_pass_the_limit(pg_api: str, key: str) -> None:
    responses = burst(f"{pg_api}/v1/runs", [RUN] * 200, key)
    assert accepted(responses) == LIMIT
    assert active(key) == LIMIT


@pytest.mark.service
def test_concurrent_grids_never_pass_the_limit(pg_api: str, key: str) -> None:
    grid = {"name": "quota", "base": RUN, "grid": {"lr": [0.01, 0.03, 0.1, 0.3]}}  # 4 runs each
    assert accepted(burst(f"{pg_api}/v1/experiments", [grid] * 30, key)) == LIMIT // 4
    assert active(key) == 4 * (LIMIT // 4)


@pytest.mark.service
def test_lr_finder_jobs_and_population_members_count_in_the_budget(pg_api: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    population = httpx.post(f"{pg_api}/v1/pbt", json=pbt(4), headers=headers, timeout=30)
    assert population.status_code == 202, population.text
    # 4 members are active: of 20 lr-finder jobs at once, 6 fit
    assert accepted(burst(f"{pg_api}/v1/lr-finder", [LR_FINDER] * 20, key)) == LIMIT - 4
    assert active(key) == LIMIT
    for path, body in (("runs", RUN), ("lr-finder", LR_FINDER), ("pbt", pbt(2))):
        resp = httpx.post(f"{pg_api}/v1/{path}", json=body, headers=headers, timeout=30)
        assert resp.status_code == 429, (path, resp.text)
        assert "10 runs and lr-finder jobs are queued or running" in resp.json()["detail"][0]["msg"]
    # a cancelled population frees its members' places
    assert httpx.post(f"{pg_api}/v1/pbt/{population.json()['id']}/cancel", headers=headers).status_code == 202
    assert accepted(burst(f"{pg_api}/v1/runs", [RUN] * 8, key)) == 4


# --- embedded SQLite ---------------------------------------------------------------------------------


def test_concurrent_runs_on_embedded_sqlite_never_pass_the_limit(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    env.update({"LRLAB_DATA_DIR": str(tmp_path / "data"), "LRLAB_AUTH": "disabled"})
    with api_server(env, tmp_path / "api.log") as base:
        assert accepted(burst(f"{base}/v1/runs", [RUN] * 60)) == LIMIT
    with get_sessionmaker(f"sqlite:///{tmp_path / 'data' / 'lrlab.db'}")() as s:
        assert quotas.active(s, LOCAL_OWNER) == LIMIT
