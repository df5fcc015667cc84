"""Live progress (server-sent events), the Python client, the CLI and /metrics over the real stack."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from lrlab.client import ApiError, Client
from tests.conftest import ROOT, stop_process, wait_for, wait_run
from tests.e2e.test_embedded import _free_port, _http

pytestmark = pytest.mark.service


def read_events(client: Any, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    with client.stream("GET", f"/v1/runs/{run_id}/events") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind or "", json.loads(line[len("data: ") :])))
    return events


def test_events_replay_then_follow_until_the_run_ends(api_client: Any, worker: Any) -> None:
    run_id = api_client.post("/v1/runs", json={"dataset": "spirals", "epochs": 6, "batch_size": 256}).json()["id"]
    events = read_events(api_client, run_id)  # opened while queued or running: the stream ends with the run
    points = [d for k, d in events if k == "point"]
    statuses = [d["status"] for k, d in events if k == "status"]
    assert [p["epoch"] for p in points] == [1, 2, 3, 4, 5, 6]
    assert {"train_loss", "val_accuracy", "lr", "seconds"} <= set(points[0])
    assert statuses[-1] == "succeeded" and len(statuses) == len(set(statuses))
    curve = api_client.get(f"/v1/runs/{run_id}/curves").json()["points"]
    assert points == curve
    again = read_events(api_client, run_id)  # a finished run: the replay, then its final status
    assert [d for k, d in again if k == "point"] == curve and again[-1] == ("status", {"status": "succeeded"})


def test_python_client_round_trip(api_client: Any, worker: Any) -> None:
    lab = Client(http=api_client)
    created = lab.submit_experiment({"name": "client", "base": {"epochs": 2}, "grid": {"lr": [1e-3, 3e-3]}})
    progress = io.StringIO()
    runs = lab.wait(created.runs, poll=0.2, out=progress)
    assert [r.status.value for r in runs] == ["succeeded", "succeeded"]
    assert "2/2 succeeded" in progress.getvalue()
    cmp = lab.compare(experiment_id=created.id, target=0.5)
    assert {r.run_id for r in cmp.runs} == set(created.runs)
    assert lab.curves(created.runs[0]).points[-1].epoch == 2
    assert lab.chart(created.id, "val_loss", fmt="svg").startswith(b"<?xml")
    with pytest.raises(ApiError) as err:
        lab.submit_run({"epochs": 0})
    assert err.value.status == 422 and "epochs" in str(err.value)
    with pytest.raises(ApiError) as err:
        lab.run("missing")
    assert err.value.status == 404


def test_cli_submit_watch_compare_runs_cancel(
    service_env: dict[str, str], api_key: str, worker: Any, tmp_path: Any
) -> None:
    port = _free_port()
    env = {**os.environ, **service_env, "LRLAB_URL": f"http://127.0.0.1:{port}", "LRLAB_API_KEY": api_key}
    api = subprocess.Popen(
        [sys.executable, "-m", "lrlab.cli", "api", "--port", str(port), "--loglevel", "WARNING"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lrlab.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
        )

    try:
        wait_for(lambda: _http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, "lrlab api", interval=0.3)
        done = cli(
            "submit",
            "--dataset",
            "blobs",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--epochs",
            "2",
            "--wait",
            "--poll",
            "0.2",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        run_id = done.stdout.split()[1]
        assert f"{run_id} succeeded" in done.stdout
        watched = cli("watch", run_id)
        assert watched.returncode == 0 and "2/2 succeeded" in watched.stdout
        spec = tmp_path / "grid.json"
        spec.write_text(json.dumps({"name": "cli grid", "base": {"epochs": 1}, "grid": {"seed": [0, 1]}}))
        grid = cli("submit", str(spec), "--wait", "--poll", "0.2")
        assert grid.returncode == 0 and grid.stdout.startswith("experiment ")
        experiment_id = grid.stdout.split()[1].rstrip(":")
        chart = tmp_path / "acc.png"
        table = cli("compare", experiment_id, "--chart", str(chart), "--url", f"http://127.0.0.1:{port}")
        assert table.returncode == 0 and "best_val_acc" in table.stdout and "seed=1" in table.stdout
        assert chart.read_bytes().startswith(b"\x89PNG")
        listed = cli("runs", "--limit", "5")
        assert run_id[:8] in listed.stdout
        queued = cli("submit", "--device", "cuda", "--epochs", "1")  # waits on the gpu queue
        cancelled = cli("cancel", queued.stdout.split()[1])
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
        unauthorized = cli("runs", "--key", "lrlab_wrong")
        assert unauthorized.returncode != 0
    finally:
        stop_process(api)


def test_metrics_in_prometheus_format(api_client: Any, worker: Any) -> None:
    run_id = api_client.post("/v1/runs", json={"epochs": 1, "dataset": "blobs"}).json()["id"]
    wait_run(api_client, run_id)
    text = api_client.get("/metrics").text
    assert 'lrlab_runs{status="succeeded"}' in text and 'lrlab_runs{status="queued"}' in text
    assert "lrlab_epoch_seconds_total" in text and "lrlab_epochs_total" in text
    assert 'lrlab_http_request_seconds_count{method="POST",route="/v1/runs",status="202"}' in text
