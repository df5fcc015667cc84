"""End to end over real Postgres, real Redis and a real Celery worker process."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from tests.conftest import wait_run

pytestmark = pytest.mark.service


def submit(client: Any, **spec: Any) -> str:
    resp = client.post("/v1/runs", json=spec)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued"
    assert resp.headers["location"] == f"/v1/runs/{body['id']}"
    return str(body["id"])


def test_post_run_trains_and_returns_curves(api_client: Any, worker: Any) -> None:
    run_id = submit(api_client, dataset="digits", epochs=3, seed=1)
    run = wait_run(api_client, run_id)
    assert run["status"] == "succeeded", run
    assert run["device"] == "cpu" and run["queue"] == "cpu"
    assert run["n_parameters"] > 0
    assert run["started_at"] >= run["created_at"] and run["finished_at"] >= run["started_at"]
    assert run["spec"]["optimizer"] == {
        "name": "adam",
        "lr": 0.001,
        "betas": [0.9, 0.999],
        "eps": 1e-08,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    curves = api_client.get(f"/v1/runs/{run_id}/curves").json()
    pts = curves["points"]
    assert [p["epoch"] for p in pts] == [1, 2, 3]
    assert all(p["lr"] == 0.001 for p in pts)
    assert pts[-1]["val_accuracy"] >= 0.8
    assert 0 <= pts[0]["train_accuracy"] <= 1 and pts[-1]["train_loss"] < pts[0]["train_loss"]
    summary = run["summary"]
    assert summary["epochs_completed"] == 3
    assert summary["best_val_accuracy"] == max(p["val_accuracy"] for p in pts)
    assert summary["min_val_loss"] == min(p["val_loss"] for p in pts)
    rows = list(csv.DictReader(io.StringIO(api_client.get(f"/v1/runs/{run_id}/curves?format=csv").text)))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["val_accuracy"]) == pytest.approx(pts[2]["val_accuracy"])


def test_schedule_lr_recorded_per_epoch(api_client: Any, worker: Any) -> None:
    run_id = submit(
        api_client,
        epochs=3,
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
        schedule={"kind": "multistep", "milestones": [1, 2], "gamma": 0.1},
    )
    assert wait_run(api_client, run_id)["status"] == "succeeded"
    lrs = [p["lr"] for p in api_client.get(f"/v1/runs/{run_id}/curves").json()["points"]]
    assert lrs == pytest.approx([0.1, 0.01, 0.001])


def test_same_spec_and_seed_give_same_curve(api_client: Any, worker: Any) -> None:
    a, b = (submit(api_client, dataset="spirals", epochs=2, seed=7) for _ in range(2))
    for run_id in (a, b):
        assert wait_run(api_client, run_id)["status"] == "succeeded"
    strip = lambda pts: [{k: v for k, v in p.items() if k != "seconds"} for p in pts]  # noqa: E731
    pa, pb = (strip(api_client.get(f"/v1/runs/{r}/curves").json()["points"]) for r in (a, b))
    assert pa == pb


def test_cancel_running_run_stops_within_an_epoch(api_client: Any, worker: Any) -> None:
    run_id = submit(api_client, dataset="digits", epochs=5000, batch_size=256)
    wait_run(api_client, run_id, until=lambda r: r["status"] == "running" and r["device"] is not None)
    wait_run(api_client, run_id, until=lambda _: len(api_client.get(f"/v1/runs/{run_id}/curves").json()["points"]) > 0)
    resp = api_client.post(f"/v1/runs/{run_id}/cancel")
    assert resp.status_code == 200 and resp.json()["cancel_requested"] is True
    run = wait_run(api_client, run_id, timeout=30)
    assert run["status"] == "cancelled"
    assert 0 < run["summary"]["epochs_completed"] < 5000
    assert api_client.post(f"/v1/runs/{run_id}/cancel").status_code == 409


def test_cancel_queued_run_is_immediate(api_client: Any, service_env: Any) -> None:
    # device cuda waits on the gpu queue, which no test worker consumes.
    run_id = submit(api_client, device="cuda", epochs=1)
    assert api_client.get(f"/v1/runs/{run_id}").json()["queue"] == "gpu"
    resp = api_client.post(f"/v1/runs/{run_id}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert resp.json()["finished_at"] is not None


def test_failure_is_recorded_with_error(api_client: Any, worker: Any) -> None:
    run_id = submit(api_client, dataset={"path": "missing/nothing.npz"}, epochs=1)
    run = wait_run(api_client, run_id)
    assert run["status"] == "failed"
    assert "nothing.npz" in run["error"]


def test_huge_lr_ends_diverged_not_failed(api_client: Any, worker: Any) -> None:
    run_id = submit(api_client, optimizer={"name": "sgd", "lr": 1000}, epochs=20)
    run = wait_run(api_client, run_id)
    assert run["status"] == "diverged", run
    assert run["summary"]["diverged_at"] in (1, 2)
    assert run["summary"]["reason"]
    pts = api_client.get(f"/v1/runs/{run_id}/curves").json()["points"]
    assert len(pts) == run["summary"]["diverged_at"]


def test_list_runs_filters_and_pages(api_client: Any, worker: Any) -> None:
    ids = [submit(api_client, dataset="blobs", optimizer={"name": "adagrad"}, epochs=1, seed=s) for s in range(3)]
    for run_id in ids:
        wait_run(api_client, run_id)
    page1 = api_client.get("/v1/runs", params={"optimizer": "adagrad", "dataset": "blobs", "limit": 2}).json()
    assert [r["id"] for r in page1["data"]] == ids[::-1][:2]
    page2 = api_client.get(
        "/v1/runs", params={"optimizer": "adagrad", "dataset": "blobs", "limit": 2, "cursor": page1["next_cursor"]}
    ).json()
    assert [r["id"] for r in page2["data"]] == [ids[0]] and page2["next_cursor"] is None
    done = api_client.get("/v1/runs", params={"status": "succeeded", "limit": 200}).json()["data"]
    assert set(ids) <= {r["id"] for r in done} and all(r["status"] == "succeeded" for r in done)
