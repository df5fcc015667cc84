"""The embedded default: `lrlab up` with no servers; a run queued while no worker runs waits in the SQLite broker
and is trained once one starts."""

from __future__ import annotations

import base64
import json
import os
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, stop_process, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    env["LRLAB_DATA_DIR"] = str(data_dir)
    return env


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError:
        return 0, None


def _waiting(data_dir: Path, queue: str) -> list[str]:
    """The ids in the messages waiting on `queue` of the embedded broker (kombu's SQLAlchemy transport tables)."""
    with sqlite3.connect(data_dir / "broker.db") as broker:
        rows = broker.execute(
            "SELECT m.payload FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
            " WHERE q.name = ? AND m.visible ORDER BY m.id",
            (queue,),
        ).fetchall()
    return [json.loads(base64.b64decode(json.loads(payload)["body"]))[0][0] for (payload,) in rows]


def _dispatched_at(data_dir: Path, run_id: str) -> str | None:
    with sqlite3.connect(data_dir / "lrlab.db") as db:
        row = db.execute("SELECT dispatched_at FROM run WHERE id = ?", (run_id,)).fetchone()
    return row[0] if row else None


def _start(args: list[str], data_dir: Path, log: Path, auth: str | None = None) -> subprocess.Popen[bytes]:
    env = _env(data_dir)
    if auth is not None:
        env["LRLAB_AUTH"] = auth
    return subprocess.Popen(
        [sys.executable, "-m", "lrlab.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_up_embedded_trains_and_keeps_queued_runs_across_restart(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "up.log"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"

    # 1. The API alone (no worker yet): the run is accepted, stamped, and its message waits in the SQLite broker
    # (sent before the 202: nothing here waits for it).
    api = _start(["api", "--port", str(port)], data_dir, log, auth="disabled")
    try:
        wait_for(lambda: _http("GET", f"{base}/healthz")[0] == 200, 60, "embedded api", interval=0.3)
        status, created = _http("POST", f"{base}/v1/runs", {"dataset": "digits", "epochs": 2})
        assert status == 202, created
        assert _waiting(data_dir, "cpu") == [created["id"]]
        assert _dispatched_at(data_dir, created["id"]) is not None
    finally:
        stop_process(api)

    # 2. `lrlab up` on the same data dir: its worker takes that message (the reconciler would send a stamped run
    # again only after LRLAB_REDISPATCH_SECONDS, ten minutes) and trains the run queued before the restart.
    up = _start(["up", "--port", str(port)], data_dir, log)
    try:

        def finished() -> Any:
            status, run = _http("GET", f"{base}/v1/runs/{created['id']}")
            return run if status == 200 and run["status"] not in ("queued", "running") else None

        run = wait_for(finished, 120, "the queued run to finish", interval=0.5)
        assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
        assert _waiting(data_dir, "cpu") == []
        assert _http("GET", f"{base}/readyz")[1] == {"status": "ok", "database": "ok", "broker": "ok"}
        status, second = _http("POST", f"{base}/v1/runs", {"dataset": "spirals", "epochs": 2, "model": "cnn"})
        assert status == 202
        run = wait_for(
            lambda: (r := _http("GET", f"{base}/v1/runs/{second['id']}")[1])["status"] == "succeeded" and r,
            120,
            "a second run",
            interval=0.5,
        )
        pts = _http("GET", f"{base}/v1/runs/{second['id']}/curves")[1]["points"]
        assert [p["epoch"] for p in pts] == [1, 2]
        # live progress on the embedded store (one watcher polls SQLite): a new run's stream to its end
        status, third = _http("POST", f"{base}/v1/runs", {"dataset": "spirals", "epochs": 3})
        with urllib.request.urlopen(f"{base}/v1/runs/{third['id']}/events", timeout=120) as resp:
            data = [json.loads(line[6:]) for line in resp.read().decode().splitlines() if line.startswith("data: ")]
        assert [d["epoch"] for d in data if "epoch" in d] == [1, 2, 3]
        assert data[-1] == {"status": "succeeded"}
        assert (data_dir / "lrlab.db").exists() and (data_dir / "broker.db").exists()
    finally:
        stop_process(up)
        assert up.returncode is not None
