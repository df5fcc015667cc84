"""Fused execution through the service: members of a grid train as one stacked population, each still a run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_run
from tests.e2e.test_experiments import wait_experiment

pytestmark = pytest.mark.service

# 16 members, lr up to 3e-3 (the well-conditioned range on digits); four optimizer groups in one pack
GRID = {
    "lr": [1e-3, 3e-3],
    "seed": [0, 1],
    "optimizer": [{"name": "adam"}, {"name": "sgd", "momentum": 0.9}, {"name": "rmsprop"}, {"name": "adamw"}],
}


def _curves(client: Any, experiment_id: str) -> dict[str, list[dict[str, Any]]]:
    exp = client.get(f"/v1/experiments/{experiment_id}").json()
    return {r["label"]: client.get(f"/v1/runs/{r['id']}/curves").json()["points"] for r in exp["runs"]}


def test_fused_grid_matches_separate_runs(api_client: Any, worker: Any) -> None:
    base = {"dataset": "digits", "epochs": 3, "device": "cpu"}
    fused = api_client.post("/v1/experiments", json={"name": "f", "base": base, "grid": GRID, "execution": "fused"})
    separate = api_client.post(
        "/v1/experiments", json={"name": "s", "base": base, "grid": GRID, "execution": "separate"}
    )
    assert fused.status_code == separate.status_code == 202
    f_exp, s_exp = (wait_experiment(api_client, r.json()["id"]) for r in (fused, separate))
    assert f_exp["execution"] == "fused" and s_exp["execution"] == "separate"
    assert f_exp["counts"] == {"succeeded": 16}
    f_runs = [api_client.get(f"/v1/runs/{r['id']}").json() for r in f_exp["runs"]]
    assert len({r["pack_id"] for r in f_runs}) == 1 and f_runs[0]["pack_id"] is not None
    assert all(api_client.get(f"/v1/runs/{r['id']}").json()["pack_id"] is None for r in s_exp["runs"])
    f_curves, s_curves = _curves(api_client, f_exp["id"]), _curves(api_client, s_exp["id"])
    assert f_curves.keys() == s_curves.keys()
    for label in f_curves:
        assert [p["epoch"] for p in f_curves[label]] == [1, 2, 3]
        for fp, sp in zip(f_curves[label], s_curves[label], strict=True):
            for field in ("train_loss", "val_loss", "val_accuracy"):
                assert fp[field] == pytest.approx(sp[field], rel=1e-3), (label, fp["epoch"], field)
            assert fp["lr"] == sp["lr"]


def test_fused_request_that_cannot_fuse_runs_separately(api_client: Any, worker: Any) -> None:
    body = {
        "name": "dropout",  # each run's masks come from its own global random stream: not fusable
        "base": {"model": {"name": "mlp", "dropout": 0.2}, "dataset": "digits", "epochs": 1},
        "grid": {"seed": [0, 1]},
        "execution": "fused",
    }
    exp = wait_experiment(api_client, api_client.post("/v1/experiments", json=body).json()["id"])
    assert exp["counts"] == {"succeeded": 2}
    for member in exp["runs"]:
        run = api_client.get(f"/v1/runs/{member['id']}").json()
        assert run["pack_id"] is None and run["not_fused_reason"].startswith("dropout is not fusable"), run


def test_cancel_one_member_stops_only_it(api_client: Any, worker: Any) -> None:
    body = {
        "name": "long",
        "base": {"dataset": "spirals", "epochs": 500, "batch_size": 64, "device": "cpu"},
        "grid": {"seed": [0, 1, 2]},
        "execution": "fused",
    }
    created = api_client.post("/v1/experiments", json=body).json()
    victim = created["runs"][1]
    wait_run(api_client, victim, until=lambda _: len(api_client.get(f"/v1/runs/{victim}/curves").json()["points"]) > 2)
    assert api_client.post(f"/v1/runs/{victim}/cancel").status_code == 200
    stopped = wait_run(api_client, victim, timeout=60)
    assert stopped["status"] == "cancelled" and stopped["summary"]["epochs_completed"] < 500
    for run_id in created["runs"]:
        if run_id != victim:
            run = wait_run(api_client, run_id, timeout=120)
            assert run["status"] == "succeeded" and run["summary"]["epochs_completed"] == 500


def test_fused_cnn_grid_trains_as_one_pack(api_client: Any, worker: Any) -> None:
    body = {
        "name": "cnn",
        "base": {
            "model": {"name": "cnn", "channels": 8, "depth": 1},
            "dataset": "digits",
            "epochs": 2,
            "device": "cpu",
        },
        "grid": {"seed": [0, 1], "lr": [1e-3, 3e-3]},
        "execution": "fused",
    }
    exp = wait_experiment(api_client, api_client.post("/v1/experiments", json=body).json()["id"])
    assert exp["execution"] == "fused" and exp["counts"] == {"succeeded": 4}
    runs = [api_client.get(f"/v1/runs/{r['id']}").json() for r in exp["runs"]]
    assert len({r["pack_id"] for r in runs}) == 1 and runs[0]["pack_id"] is not None
    assert all(r["summary"]["epochs_completed"] == 2 for r in runs)
