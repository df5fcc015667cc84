"""Ctrl-C on `lrlab up` while a run trains: everything exits within 10 s, the run is handed back checkpointed, and
the next `lrlab up` trains its next epoch within 20 s of answering /readyz, no epoch trained twice."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.conftest import stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http, _start


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _ctrl_c(up: subprocess.Popen[bytes], log: Path) -> float:
    """SIGINT to the whole process group, as a terminal's Ctrl-C does; returns how long until all of it is gone."""
    t0 = time.monotonic()
    os.killpg(up.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        up.wait(timeout=15)
    wait_for(lambda: not _group_alive(up.pid), 15, "the processes `lrlab up` started to exit", interval=0.05)
    elapsed = time.monotonic() - t0
    assert up.returncode is not None, log.read_text()[-3000:]
    return elapsed


def _row(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_ctrl_c_on_up_hands_the_run_back_and_the_next_up_resumes_it(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "up.log"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    db = data_dir / "lrlab.db"

    up = _start(["up", "--port", str(port)], data_dir, log)
    try:
        wait_for(lambda: _http("GET", f"{base}/readyz")[0] == 200, 90, "lrlab up", interval=0.2)
        status, run = _http("POST", f"{base}/v1/runs", {"dataset": "digits", "epochs": 10000})
        assert status == 202, run
        run_id = run["id"]
        wait_for(
            lambda: len(_http("GET", f"{base}/v1/runs/{run_id}/curves")[1]["points"]) >= 5,
            120,
            "a few epochs",
            interval=0.2,
        )
        elapsed = _ctrl_c(up, log)
    finally:
        stop_process(up)
    assert elapsed < 10, f"`lrlab up` took {elapsed:.1f}s to exit\n" + log.read_text()[-3000:]

    # handed back: queued, no lease, its checkpoint at the last stored epoch, the epochs stored 1..n
    ((status, token, expires),) = _row(db, "SELECT status, lease_token, lease_expires_at FROM run WHERE id = ?", run_id)
    assert (status, token, expires) == ("queued", None, None), log.read_text()[-3000:]
    before = _row(db, "SELECT epoch, seconds, train_loss FROM curve_point WHERE run_id = ? ORDER BY epoch", run_id)
    n = len(before)
    assert [p[0] for p in before] == list(range(1, n + 1))
    assert _row(db, "SELECT epoch FROM checkpoint WHERE run_id = ?", run_id) == [(n,)], log.read_text()[-4000:]

    log2 = tmp_path / "up2.log"
    up = _start(["up", "--port", str(port)], data_dir, log2)
    try:
        wait_for(lambda: _http("GET", f"{base}/readyz")[0] == 200, 90, "lrlab up again", interval=0.05)
        ready = time.monotonic()

        def next_epoch() -> Any:
            pts = _http("GET", f"{base}/v1/runs/{run_id}/curves")[1]["points"]
            return pts if len(pts) > n else None

        wait_for(next_epoch, 60, "the run's next epoch")
        took = time.monotonic() - ready
        assert took < 20, f"next epoch {took:.1f}s after /readyz\n" + log2.read_text()[-3000:]
        _ctrl_c(up, log2)
    finally:
        stop_process(up)
    after = _row(db, "SELECT epoch, seconds, train_loss FROM curve_point WHERE run_id = ? ORDER BY epoch", run_id)
    assert [p[0] for p in after] == list(range(1, len(after) + 1)) and len(after) > n
    assert after[:n] == before  # the epochs trained before the Ctrl-C are the ones stored: none trained again
    assert f"run {run_id}: attempt 1 resumes after epoch {n}" in log2.read_text()


def test_ctrl_c_inside_a_long_epoch_hands_the_run_back_at_once(tmp_path: Path) -> None:
    """An epoch far longer than the shutdown's grace: the run is released where it stands (HAND_BACK_SECONDS)."""
    import numpy as np

    data_dir, log = tmp_path / "data", tmp_path / "up.log"
    (data_dir / "datasets").mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2400, 3, 32, 32)).astype(np.float32)  # (N, C, H, W): ~20 s an epoch for this resnet
    np.savez(data_dir / "datasets" / "big.npz", x=x, y=rng.integers(0, 4, size=2400))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start(["up", "--port", str(port)], data_dir, log)
    try:
        wait_for(lambda: _http("GET", f"{base}/readyz")[0] == 200, 90, "lrlab up", interval=0.2)
        spec = {"dataset": {"path": "big.npz"}, "model": {"name": "resnet", "width": 64, "blocks": 4}, "batch_size": 8}
        status, run = _http("POST", f"{base}/v1/runs", {**spec, "epochs": 3})
        assert status == 202, run
        wait_for(lambda: _http("GET", f"{base}/v1/runs/{run['id']}")[1]["status"] == "running", 90, "the run to start")
        time.sleep(1)
        elapsed = _ctrl_c(up, log)
    finally:
        stop_process(up)
    text = log.read_text()
    assert elapsed < 10, f"`lrlab up` took {elapsed:.1f}s to exit\n" + text[-3000:]
    assert "handed back mid-epoch" in text, text[-3000:]
    query = "SELECT status, lease_token, lease_expires_at, attempts FROM run WHERE id = ?"
    assert _row(data_dir / "lrlab.db", query, run["id"]) == [("queued", None, None, 0)]
    assert _row(data_dir / "lrlab.db", "SELECT count(*) FROM curve_point WHERE run_id = ?", run["id"]) == [(0,)]
