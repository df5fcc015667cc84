"""Shared fixtures: a private Postgres database and Redis db number per test run, a real worker process.

Service tests talk to real Postgres and Redis. Outside CI they are skipped when either is missing;
under CI (CI=true) a missing service fails the run loudly instead.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.example_plugin import ensure_example_plugin

PG_ADMIN_URL = os.environ.get("LRLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("LRLAB_TEST_REDIS", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _sqlite_head() -> Path:
    """A SQLite database migrated to head, once per test run (a migration from scratch takes ~1.5 s)."""
    from lrlab.migrate import upgrade

    folder = Path(tempfile.mkdtemp(prefix="lrlab-sqlite-head-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    upgrade(f"sqlite:///{folder / 'lrlab.db'}")
    return folder / "lrlab.db"


def sqlite_at_head(path: Path) -> str:
    """A new SQLite database at `path`, at the migrations' head: a copy of _sqlite_head (SQLite's backup, which
    takes what its write-ahead log holds too). Its URL."""
    with contextlib.closing(sqlite3.connect(_sqlite_head())) as source, contextlib.closing(sqlite3.connect(path)) as to:
        source.backup(to)
    return f"sqlite:///{path}"


def _pg_ok() -> str | None:
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        return None
    except Exception as exc:
        return f"Postgres at {PG_ADMIN_URL}: {exc}"


def _redis_ok() -> str | None:
    try:
        redis.Redis.from_url(f"{REDIS_HOST}/0", socket_connect_timeout=3).ping()
        return None
    except Exception as exc:
        return f"Redis at {REDIS_HOST}: {exc}"


@pytest.fixture(scope="session")
def services() -> None:
    problems = [p for p in (_pg_ok(), _redis_ok()) if p]
    if problems:
        if os.environ.get("CI") == "true":
            pytest.exit("CI needs real services, missing: " + "; ".join(problems), returncode=3)
        pytest.skip("service unavailable: " + "; ".join(problems))


@contextlib.contextmanager
def private_database() -> Iterator[str]:
    """A Postgres database of its own, created empty and dropped afterwards; its lrlab URL."""
    name = f"lrlab_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def spare_redis_db() -> Iterator[str]:
    """A Redis db number (1..15) no other test run uses, claimed with a lock key in db 0; flushed before and after."""
    admin = redis.Redis.from_url(f"{REDIS_HOST}/0")
    token = uuid.uuid4().hex
    db = next((n for n in range(1, 16) if admin.set(f"lrlab-test-lock:{n}", token, nx=True, ex=3600)), None)
    if db is None:
        pytest.fail("no free Redis db number for this test run")
    url = f"{REDIS_HOST}/{db}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()
        if admin.get(f"lrlab-test-lock:{db}") == token.encode():
            admin.delete(f"lrlab-test-lock:{db}")


@pytest.fixture(scope="session")
def pg_url(services: None) -> Iterator[str]:
    with private_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(services: None) -> Iterator[str]:
    with spare_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def service_env(pg_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Point this process (and the workers it starts) at the private database and broker. Every worker started
    from here offers the example plugin (examples/lrlab-example-plugin), installed first if it is not."""
    ensure_example_plugin()
    data_dir = tmp_path_factory.mktemp("lrlab-data")
    env = {
        "LRLAB_DATABASE_URL": pg_url,
        "LRLAB_BROKER_URL": redis_url,
        "LRLAB_DATA_DIR": str(data_dir),
        "LRLAB_HEARTBEAT_SECONDS": "1",
        "LRLAB_HEARTBEAT_TTL_SECONDS": "5",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reset()
    from lrlab.migrate import upgrade

    upgrade()
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _reset()


def _reset() -> None:
    from lrlab import broker, db

    db.reset_caches()
    broker.reset_client()


def start_worker(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "lrlab.cli", "worker", "--loglevel", "INFO", *args]
    return subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def live_workers(queue_name: str) -> int:
    from sqlalchemy import select

    from lrlab.db import session_scope
    from lrlab.models import WorkerHeartbeat

    with session_scope() as s:
        return sum(queue_name in q.split(",") for q in s.scalars(select(WorkerHeartbeat.queues)))


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL for the whole process group (started with start_new_session) so no child lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """One real CPU worker process for the whole run (solo pool, like `lrlab worker`)."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    proc = start_worker(service_env, "--queues", "cpu", log=log)
    try:
        wait_for(lambda: live_workers("cpu") or proc.poll() is not None, 60, "the worker's heartbeat")
        if proc.poll() is not None:
            pytest.fail("worker exited:\n" + log.read_text()[-4000:])
        yield proc
    finally:
        stop_process(proc)


@pytest.fixture
def q(service_env: dict[str, str], redis_url: str) -> Iterator[tuple[str, Callable[[], int]]]:
    """A queue name no worker consumes, and a way to count the messages waiting in it."""
    name = f"t{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(redis_url)
    yield name, lambda: int(broker.llen(name))
    broker.delete(name)


def make_key(name: str) -> str:
    from lrlab import auth
    from lrlab.db import session_scope

    with session_scope() as session:
        return auth.create_key(session, name)[1]


@pytest.fixture(scope="session")
def api_key(service_env: dict[str, str]) -> str:
    return make_key("tests")


@pytest.fixture(scope="session")
def api_client(service_env: dict[str, str], api_key: str) -> Iterator[Any]:
    """An HTTP client for the app, authenticated as the session's own key."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {api_key}"}) as client:
        yield client


def wait_run(client: Any, run_id: str, timeout: float = 60, until: Callable[[dict], bool] | None = None) -> dict:
    """Poll GET /v1/runs/{id} until it is finished (or `until` holds)."""
    done = until or (lambda r: r["status"] not in ("queued", "running"))

    def check() -> dict | None:
        body = client.get(f"/v1/runs/{run_id}").json()
        return body if done(body) else None

    return wait_for(check, timeout, f"run {run_id}", interval=0.1)
