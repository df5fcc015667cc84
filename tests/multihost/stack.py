"""lrlab on cluster hosts (tests/cluster.py): the api on one host, workers on others, each with its own data dir.

The test process (the root namespace) keeps its own view of the same database and broker on 127.0.0.1; the
hosts reach them, and the object store, at the cluster's gateway through the forwarders. Every host's database
connections carry `application_name=<its hostname>`, so Postgres can say which host wrote what (the multi-host
test records every write to curve points with it).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from sqlalchemy.engine import make_url

from tests.cluster import Cluster, Host
from tests.conftest import private_database, spare_redis_db

CLI = [sys.executable, "-m", "lrlab.cli"]


@contextlib.contextmanager
def private_services() -> Iterator[dict[str, str]]:
    """A new Postgres database and a free Redis db number (claimed as tests/conftest.py claims one), dropped
    afterwards: {"LRLAB_DATABASE_URL", "LRLAB_BROKER_URL", "pg": a psycopg URL for the test's own queries}.

    Not the session's: the hosts' workers must not share a broker with the test session's own worker.
    """
    with private_database() as database, spare_redis_db() as broker:
        pg = make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)
        yield {"LRLAB_DATABASE_URL": database, "LRLAB_BROKER_URL": broker, "pg": pg}


# Which host wrote each curve point: a trigger reads the writer's application_name (on_host sets its hostname).
RECORD_WRITES = """
CREATE TABLE curve_write (run_id text, epoch int, host text, op text, at timestamptz);
CREATE FUNCTION record_curve_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO curve_write VALUES (NEW.run_id, NEW.epoch, current_setting('application_name'), TG_OP, clock_timestamp());
  RETURN NEW;
END $$;
CREATE TRIGGER curve_write AFTER INSERT OR UPDATE ON curve_point FOR EACH ROW EXECUTE FUNCTION record_curve_write();
"""


def record_writes(pg: str) -> None:
    """From now on, every insert or update of a curve point is logged in `curve_write` with the writing host."""
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(RECORD_WRITES)  # type: ignore[arg-type]


def on_host(base: Mapping[str, str], cluster: Cluster, host: Host, data_dir: Path) -> dict[str, str]:
    """`base` (an environment pointing at loopback servers) as `host` must see it: the gateway, its own disk."""
    env = {k: v for k, v in base.items() if k != "pg"}
    if url := env.get("LRLAB_DATABASE_URL"):
        db = make_url(url)
        gateway, port = cluster.address("postgres")
        env["LRLAB_DATABASE_URL"] = db.set(
            host=gateway, port=port, query={**db.query, "application_name": host.hostname}
        ).render_as_string(hide_password=False)
    if url := env.get("LRLAB_BROKER_URL"):
        parts = urlsplit(url)
        gateway, port = cluster.address("redis")
        env["LRLAB_BROKER_URL"] = urlunsplit(parts._replace(netloc=f"{gateway}:{port}"))
    if "AWS_ENDPOINT_URL" in env and "s3" in cluster.forward:
        env["AWS_ENDPOINT_URL"] = cluster.url("s3", "http")
    data_dir.mkdir(parents=True, exist_ok=True)
    env["LRLAB_DATA_DIR"] = str(data_dir)
    return env


def _wait(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if value := predicate():
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def start_api(host: Host, env: Mapping[str, str], log: Path, port: int = 8000) -> tuple[subprocess.Popen[bytes], str]:
    """`lrlab api` on the host, listening on its address; (process, base URL) once /healthz answers."""
    proc = host.popen(
        [*CLI, "api", "--host", "0.0.0.0", "--port", str(port)],
        env=dict(env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://{host.address}:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    _wait(healthy, 60, f"the api on {host.hostname}", proc)
    return proc, base


def start_worker(
    host: Host, env: Mapping[str, str], log: Path, pg: str, *, queues: str = "cpu", concurrency: int = 1
) -> subprocess.Popen[bytes]:
    """`lrlab worker` on the host; returns once its heartbeat is in the database `pg` (read from here)."""
    proc = host.popen(
        [*CLI, "worker", "--queues", queues, "--concurrency", str(concurrency), "--loglevel", "INFO"],
        env=dict(env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    _wait(lambda: host.hostname in heartbeats(pg), 90, f"the worker on {host.hostname} to beat", proc)
    return proc


def heartbeats(pg: str) -> set[str]:
    """Hosts whose workers have a heartbeat row (Celery node names end in @<hostname>)."""
    with psycopg.connect(pg) as conn:
        return {row[0].split("@", 1)[-1] for row in conn.execute("SELECT hostname FROM worker_heartbeat")}


def migrate(host: Host, env: Mapping[str, str]) -> None:
    """`lrlab db upgrade` from the host (as compose's migrate service does)."""
    out = host.run([*CLI, "db", "upgrade"], env=dict(env), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"lrlab db upgrade failed on {host.hostname}:\n{out.stdout}{out.stderr}")


def stop(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    """SIGTERM the process's group (a worker's pool children too), SIGKILL what is left after `timeout`."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
