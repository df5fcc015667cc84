"""The multi-host harness itself: hosts reach Postgres, Redis and the S3 server through the forwarders; a cut
link makes them unreachable from that host only, and restoring it brings them back; a crashed test's hosts are
swept by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests import cluster
from tests.conftest import PG_ADMIN_URL, REDIS_HOST
from tests.storage_fixtures import MotoServer

pytestmark = pytest.mark.usefixtures("services", "netns")

# Run on a host: reach each server at the gateway, print {"postgres": ok-or-error, ...}. With --use, also use
# them for real: a query, a Redis round trip, an object written and read back through lrlab.storage.
PROBE = textwrap.dedent(
    """
    import errno, json, socket, sys
    gateway, pg_port, redis_port, s3_port, bucket, use = sys.argv[1:7]
    found = {}
    def tcp(port):
        with socket.create_connection((gateway, int(port)), timeout=2):
            return "ok"
    for name, port in (("postgres", pg_port), ("redis", redis_port), ("s3", s3_port)):
        try:
            found[name] = tcp(port)
        except TimeoutError:
            found[name] = "timeout"
        except OSError as exc:
            found[name] = errno.errorcode.get(exc.errno, type(exc).__name__)
    if use == "1":
        import psycopg, redis
        from lrlab.storage import open_storage
        with psycopg.connect(f"postgresql://postgres@{gateway}:{pg_port}/postgres", connect_timeout=3) as conn:
            found["postgres_query"] = conn.execute("SELECT inet_client_addr()::text, 41 + 1").fetchone()[1]
        found["redis_ping"] = redis.Redis(host=gateway, port=int(redis_port), socket_timeout=3).ping()
        store = open_storage(f"s3://{bucket}/probe")
        store.put_bytes("hello", b"from " + socket.gethostname().encode())
        found["s3_roundtrip"] = store.get_bytes("hello").decode().startswith("from ")
    try:
        socket.create_connection(("127.0.0.1", int(pg_port)), timeout=1).close()
        found["own_loopback_postgres"] = "ok"
    except OSError as exc:
        found["own_loopback_postgres"] = errno.errorcode.get(exc.errno, type(exc).__name__)
    found["hostname"] = socket.gethostname()
    print(json.dumps(found))
    """
)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def lab(moto_server: MotoServer):
    forward = {
        "postgres": ("127.0.0.1", _port(PG_ADMIN_URL)),
        "redis": ("127.0.0.1", _port(REDIS_HOST)),
        "s3": ("127.0.0.1", moto_server.port),
    }
    with cluster.Cluster(hosts=2, forward=forward) as c:
        yield c


def probe(lab: cluster.Cluster, host: cluster.Host, bucket: str, env: dict[str, str], use: bool) -> dict:
    args = [str(lab.address(s)[1]) for s in ("postgres", "redis", "s3")]
    out = host.run(
        [sys.executable, "-c", PROBE, lab.gateway, *args, bucket, "1" if use else "0"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_hosts_reach_the_servers_through_the_forwarders_and_a_cut_link_stops_them(
    lab: cluster.Cluster, moto_server: MotoServer
) -> None:
    bucket = moto_server.create_bucket()
    s3_env = moto_server.env(endpoint=lab.url("s3", "http"))
    api, worker = lab.hosts
    assert {h.address for h in lab.hosts}.isdisjoint({lab.gateway}) and api.address != worker.address

    up = probe(lab, worker, bucket, s3_env, use=True)
    assert up == {
        "postgres": "ok",
        "redis": "ok",
        "s3": "ok",
        "postgres_query": 42,
        "redis_ping": True,
        "s3_roundtrip": True,
        "own_loopback_postgres": "ECONNREFUSED",  # a host of its own: nothing on its loopback
        "hostname": worker.hostname,
    }

    worker.cut()
    cut = probe(lab, worker, bucket, s3_env, use=False)
    # Dropped, not refused: a connect times out, or fails once the kernel gives up resolving the gateway.
    assert {cut["postgres"], cut["redis"], cut["s3"]} <= {"timeout", "EHOSTUNREACH"}, cut
    assert probe(lab, api, bucket, s3_env, use=True)["s3_roundtrip"] is True  # the other host is unaffected

    worker.restore()
    back = probe(lab, worker, bucket, s3_env, use=True)
    assert back["postgres_query"] == 42 and back["redis_ping"] is True and back["s3_roundtrip"] is True
    assert set(moto_server.objects(bucket)) == {"probe/hello"}


def test_the_test_process_reaches_a_server_on_a_host(lab: cluster.Cluster) -> None:
    host = lab.hosts[0]
    server = host.popen(
        [
            sys.executable,
            "-c",
            "import http.server as h; h.HTTPServer(('0.0.0.0', 8000), h.SimpleHTTPRequestHandler).serve_forever()",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import httpx

        deadline = time.monotonic() + 20
        while True:
            try:
                assert httpx.get(f"http://{host.address}:8000/", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


CRASHING = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys
    from tests import cluster
    c = cluster.Cluster(hosts=2, forward={"x": ("127.0.0.1", int(sys.argv[1]))})
    c.up()
    sleeper = c.hosts[0].popen(["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(json.dumps({"id": c.id, "forwarder": c.forwarder.pid, "sleeper": sleeper.pid,
                      "namespaces": [h.netns for h in c.hosts], "links": [h.link for h in c.hosts]}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no teardown runs
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def test_what_a_killed_test_left_is_swept_by_the_next_cluster(moto_server: MotoServer, tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", CRASHING, str(moto_server.port)]
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:  # files: what it left runs on
        code = subprocess.run(cmd, cwd=cluster.ROOT, stdout=out, stderr=err, timeout=60).returncode
    assert code == -signal.SIGKILL, (tmp_path / "err").read_text()
    left = json.loads((tmp_path / "out").read_text())
    netns = set(cluster._ip("netns", "list").stdout.split())
    assert set(left["namespaces"]) <= netns  # left behind
    assert _alive(left["sleeper"])
    assert (cluster.STATE_DIR / f"{left['id']}.json").exists()

    with cluster.Cluster(hosts=1):  # any new cluster sweeps first
        pass

    assert not set(left["namespaces"]) & set(cluster._ip("netns", "list").stdout.split())
    for link in [*left["links"], f"lrb{left['id']}"]:
        assert cluster._ip("link", "show", link, check=False).returncode != 0, link
    assert not _alive(left["sleeper"])
    deadline = time.monotonic() + 5  # the forwarder notices its parent is gone within a second (or is killed)
    while _alive(left["forwarder"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(left["forwarder"])
    assert not (cluster.STATE_DIR / f"{left['id']}.json").exists()


def test_teardown_leaves_nothing(moto_server: MotoServer) -> None:
    with cluster.Cluster(hosts=2, forward={"s3": ("127.0.0.1", moto_server.port)}) as c:
        names, links, forwarder = [h.netns for h in c.hosts], [h.link for h in c.hosts], c.forwarder
        c.hosts[1].popen(["sleep", "600"])
        c.hosts[1].cut()
    assert not set(names) & set(cluster._ip("netns", "list").stdout.split())
    for link in [*links, c.bridge]:
        assert cluster._ip("link", "show", link, check=False).returncode != 0
    assert forwarder is not None and forwarder.poll() is not None
    assert not (cluster.STATE_DIR / f"{c.id}.json").exists()
