"""Live progress (server-sent events), the Python client, the CLI and /metrics over the real stack."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lrlab.client import ApiError, Client
from lrlab.schemas.pbt import DiscoveredSchedule, PbtCreate
from tests.conftest import ROOT, stop_process, wait_for, wait_run
from tests.e2e.test_embedded import _free_port, _http

pytestmark = pytest.mark.service

# Four members, two intervals, one exploit round: a few seconds on the session's worker.
TINY_PBT: dict[str, Any] = {
    "name": "tiny pbt",
    "base": {"dataset": "digits", "device": "cpu", "model": {"name": "mlp", "hidden": [32]}},
    "population": 4,
    "epochs": 4,
    "interval": 2,
    "mutations": {"lr": {"log_uniform": [1e-4, 1e-1]}},
    "execution": "fused",
}


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
        run_id = done.stdout.strip()  # the id alone on stdout; the outcome on stderr
        assert f"{run_id} succeeded" in done.stderr
        watched = cli("watch", run_id)
        assert watched.returncode == 0 and "2/2 succeeded" in watched.stdout
        spec = tmp_path / "grid.json"
        spec.write_text(json.dumps({"name": "cli grid", "base": {"epochs": 1}, "grid": {"seed": [0, 1]}}))
        grid = cli("submit", str(spec), "--wait", "--poll", "0.2")
        assert grid.returncode == 0 and grid.stderr.startswith("experiment ")
        experiment_id = grid.stdout.strip()
        chart = tmp_path / "acc.png"
        table = cli("compare", experiment_id, "--chart", str(chart), "--url", f"http://127.0.0.1:{port}")
        assert table.returncode == 0 and "best_val_acc" in table.stdout and "seed=1" in table.stdout
        assert chart.read_bytes().startswith(b"\x89PNG")
        listed = cli("runs", "--limit", "5")
        assert run_id[:8] in listed.stdout
        queued = cli("submit", "--device", "cuda", "--epochs", "1")  # waits on the gpu queue
        cancelled = cli("cancel", queued.stdout.strip())
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


def test_python_client_pbt_round_trip(api_client: Any, worker: Any, tmp_path: Path) -> None:
    lab = Client(http=api_client)
    request = PbtCreate.model_validate(TINY_PBT)  # the API's own schema, or a plain dict
    created = lab.submit_pbt(request, idempotency_key="client-pbt")
    assert len(created.runs) == 4
    assert lab.submit_pbt(request, idempotency_key="client-pbt") == created  # replayed, not a second population
    progress = io.StringIO()
    pbt = lab.wait_pbt(created.id, poll=0.2, timeout=120, out=progress)
    assert pbt.status.value == "succeeded", pbt.error
    lines = progress.getvalue().splitlines()
    assert lines == list(dict.fromkeys(lines))  # a line whenever the population moves, never a repeat
    assert lines[-1].startswith(created.id[:8]) and "4/4 round 2/2 succeeded  1 exploit  best member" in lines[-1]

    got = lab.pbt(created.id)
    assert [m.run_id for m in got.members] == created.runs and all(len(m.points) == 4 for m in got.members)
    assert [(e.epoch, len(e.new)) for e in got.lineage] == [(2, 1)]
    assert got.best is not None and got.best.epoch == 4 and len(got.best.schedule) == 4

    schedule = lab.pbt_schedule(created.id)
    assert isinstance(schedule, DiscoveredSchedule) and schedule.member == got.best.member
    assert schedule.run.epochs == 4 and schedule.run.optimizer.lr == got.best.schedule[0].values["lr"]
    assert schedule.schedule.values[-1] == pytest.approx(got.best.schedule[-1].values["lr"])

    listed, cursor = [], None
    for _ in range(50):  # one population a page
        page = lab.pbts(limit=1, cursor=cursor)
        listed += page.data
        if (cursor := page.next_cursor) is None:
            break
    assert len({p.id for p in listed}) == len(listed) and all(len(p.members) == p.spec.population for p in listed)
    assert [p.id for p in listed if p.name == "tiny pbt"] == [created.id]  # the replayed create made none

    svg = lab.pbt_chart(created.id, "val_accuracy", fmt="svg")
    assert svg.startswith(b"<?xml") and b"<svg" in svg[:400]
    assert lab.pbt_chart(created.id, "train_loss").startswith(b"\x89PNG")
    saved = lab.save_pbt_chart(created.id, "val_loss", tmp_path / "pbt.png")
    assert saved.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ApiError) as err:
        lab.submit_pbt({**TINY_PBT, "interval": 5})
    assert err.value.status == 422
    with pytest.raises(ApiError) as err:
        lab.pbt("missing")
    assert err.value.status == 404


def test_python_client_cancels_a_population(api_client: Any, worker: Any) -> None:
    lab = Client(http=api_client)
    created = lab.submit_pbt({**TINY_PBT, "name": "long pbt", "epochs": 400, "interval": 200})
    wait_for(lambda: lab.pbt(created.id).members[0].points, 60, "the population to train", interval=0.1)
    cancelled = lab.cancel_pbt(created.id)  # members stop after their current epoch
    assert cancelled.status.value == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(ApiError) as err:
        lab.pbt_schedule(created.id)  # no interval ever finished
    assert err.value.status == 409

    def members_ended() -> Any:
        pbt = lab.pbt(created.id)
        return pbt if all(m.status.is_finished() for m in pbt.members) else None

    ended = wait_for(members_ended, 60, "the cancelled members to stop", interval=0.2)  # frees the worker too
    assert ended.status.value == "cancelled"
    assert {m.status.value for m in ended.members} == {"cancelled"}
    assert all(len(m.points) < 400 for m in ended.members)
    assert lab.wait_pbt(created.id, timeout=5, progress=False).status.value == "cancelled"


@pytest.fixture
def cli_api(service_env: dict[str, str], api_key: str) -> Iterator[dict[str, str]]:
    """`lrlab api` in a subprocess on the test database; yields the environment the CLI runs with."""
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
    try:
        wait_for(lambda: _http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, "lrlab api", interval=0.3)
        yield env
    finally:
        stop_process(api)


def test_cli_pbt_submit_watch_schedule(cli_api: dict[str, str], worker: Any, tmp_path: Any) -> None:
    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lrlab.cli", *args],
            env=cli_api,
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
        )

    spec = tmp_path / "pbt.json"
    spec.write_text(json.dumps({**TINY_PBT, "name": "cli pbt"}))
    submitted = cli("pbt", "submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    pbt_id = submitted.stdout.strip()  # ID=$(lrlab pbt submit ...)
    assert submitted.stderr.strip() == f"population {pbt_id}: 4 members"

    watched = cli("pbt", "watch", pbt_id, "--poll", "0.2")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    pbt = Client(cli_api["LRLAB_URL"], cli_api["LRLAB_API_KEY"]).pbt(pbt_id)
    assert pbt.best is not None
    out = watched.stdout
    assert "4/4 round 2/2 succeeded" in out
    (event,) = pbt.lineage
    assert f"after epoch 2: member {event.target} <- member {event.source}  lr " in out
    assert f"best: member {pbt.best.member} (run {pbt.best.run_id}) val_accuracy {pbt.best.score:.4f}" in out
    first = pbt.best.schedule[0]
    assert "  epochs 1-" in out and f"lr {first.values['lr']:.4g}  (as member {first.member})" in out

    printed = cli("pbt", "schedule", pbt_id, "--poll", "0.5")
    assert printed.returncode == 0, printed.stderr
    found = DiscoveredSchedule.model_validate_json(printed.stdout)
    assert found.pbt_id == pbt_id and found.member == pbt.best.member
    replayed = cli("submit", "-", "--wait", "--poll", "0.2", stdin=printed.stdout)  # the pipe the CLI suggests
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    run = Client(cli_api["LRLAB_URL"], cli_api["LRLAB_API_KEY"]).run(replayed.stdout.strip())
    assert run.status.value == "succeeded" and run.spec.schedule == found.schedule and run.spec.epochs == 4

    waiting = spec.with_name("gpu.json")  # waits on the gpu queue: no interval ever finishes
    waiting.write_text(json.dumps({**TINY_PBT, "base": {**TINY_PBT["base"], "device": "cuda"}}))
    queued_id = cli("pbt", "submit", str(waiting)).stdout.strip()
    early = cli("pbt", "schedule", queued_id)
    assert early.returncode == 2 and "409" in early.stderr
    listed = cli("pbt", "list").stdout
    assert queued_id[:8] in listed and "queued" in listed.splitlines()[0]  # newest first
    cancelled = cli("pbt", "cancel", queued_id)
    assert cancelled.returncode == 0 and f"{queued_id} cancelled" in cancelled.stdout
    assert Client(cli_api["LRLAB_URL"], cli_api["LRLAB_API_KEY"]).pbt(queued_id).status.value == "cancelled"
    bad = cli("pbt", "submit", "-", stdin=json.dumps({**TINY_PBT, "population": 1}))
    assert bad.returncode == 2 and "population" in bad.stderr
