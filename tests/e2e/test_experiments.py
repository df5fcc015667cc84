"""Experiments over the real stack: grid expansion and its cap, members, listing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_for, wait_run

pytestmark = pytest.mark.service


def _count(client: Any, path: str) -> int:
    return len(client.get(path, params={"limit": 100}).json()["data"])


def wait_experiment(client: Any, experiment_id: str, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/experiments/{experiment_id}").json()
        return body if body["status"] == "finished" else None

    return wait_for(done, timeout, f"experiment {experiment_id}", interval=0.2)


def test_create_experiment_expands_grid_into_runs(api_client: Any, worker: Any) -> None:
    body = {
        "name": "optimizers x seeds",
        "base": {"dataset": "spirals", "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 2},
        "grid": {"optimizer": [{"name": "sgd", "momentum": 0.9}, {"name": "adam"}], "seed": [0, 1]},
    }
    resp = api_client.post("/v1/experiments", json=body)
    assert resp.status_code == 202, resp.text
    created = resp.json()
    assert len(created["runs"]) == 4 and resp.headers["location"] == f"/v1/experiments/{created['id']}"
    exp = wait_experiment(api_client, created["id"])
    assert exp["name"] == "optimizers x seeds" and exp["counts"] == {"succeeded": 4}
    assert [r["id"] for r in exp["runs"]] == created["runs"]
    assert [r["label"] for r in exp["runs"]] == [
        "optimizer=sgd(momentum=0.9) seed=0",
        "optimizer=sgd(momentum=0.9) seed=1",
        "optimizer=adam seed=0",
        "optimizer=adam seed=1",
    ]
    first = api_client.get(f"/v1/runs/{created['runs'][0]}").json()
    # the base lr is stated once for every optimizer in the grid that has none of its own
    assert first["spec"]["optimizer"] == {
        "name": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
    }
    assert first["spec"]["dataset"] == {"name": "spirals", "path": None, "image_size": 32}
    assert first["experiment_id"] == created["id"] and first["params"]["seed"] == 0
    assert api_client.get(f"/v1/runs/{created['runs'][3]}").json()["spec"]["seed"] == 1


def test_create_experiment_grid_lr_lands_in_optimizer(api_client: Any, worker: Any) -> None:
    body = {"name": "lrs", "base": {"epochs": 1}, "grid": {"lr": [1e-4, 1e-3, 1e-2]}}
    created = api_client.post("/v1/experiments", json=body).json()
    lrs = [api_client.get(f"/v1/runs/{r}").json()["spec"]["optimizer"]["lr"] for r in created["runs"]]
    assert lrs == [1e-4, 1e-3, 1e-2]
    exp = wait_experiment(api_client, created["id"])
    assert [r["label"] for r in exp["runs"]] == ["lr=0.0001", "lr=0.001", "lr=0.01"]


def test_create_experiment_over_cap_is_422_and_creates_nothing(api_client: Any) -> None:
    before = (_count(api_client, "/v1/experiments"), _count(api_client, "/v1/runs"))
    body = {"name": "too big", "grid": {"lr": [1e-3] * 17, "seed": list(range(16))}}  # 272 cells
    resp = api_client.post("/v1/experiments", json=body)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "grid"]
    assert "272 cells" in resp.json()["detail"][0]["msg"]
    assert (_count(api_client, "/v1/experiments"), _count(api_client, "/v1/runs")) == before


def test_create_experiment_invalid_cell_is_422_naming_it(api_client: Any) -> None:
    before = (_count(api_client, "/v1/experiments"), _count(api_client, "/v1/runs"))
    body = {
        "name": "bad warmup",
        "base": {"epochs": 5},
        "grid": {"schedule": [{"kind": "constant"}, {"kind": "cosine", "warmup_epochs": 8}]},
    }
    resp = api_client.post("/v1/experiments", json=body)
    assert resp.status_code == 422
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["body", "grid", "cell", 1]
    assert "warmup_epochs" in detail["msg"] and "cosine" in detail["msg"]
    assert (_count(api_client, "/v1/experiments"), _count(api_client, "/v1/runs")) == before


@pytest.mark.parametrize(
    ("grid", "loc"),
    [
        ({}, ["body", "grid"]),
        ({"lr": []}, ["body", "grid", "lr"]),
        ({"lr": [0.0]}, ["body", "grid", "lr", 0]),
        ({"optimizer": [{"name": "nadam"}]}, ["body", "grid", "optimizer", 0]),
        ({"momentum": [0.9]}, ["body", "grid", "momentum"]),
    ],
)
def test_create_experiment_rejects_bad_grid(api_client: Any, grid: dict[str, Any], loc: list[Any]) -> None:
    resp = api_client.post("/v1/experiments", json={"name": "x", "grid": grid})
    assert resp.status_code == 422, resp.text
    assert loc in [d["loc"] for d in resp.json()["detail"]]


def test_list_experiments_newest_first(api_client: Any, worker: Any) -> None:
    ids = [
        api_client.post("/v1/experiments", json={"name": f"e{i}", "grid": {"seed": [i]}}).json()["id"] for i in range(3)
    ]
    page = api_client.get("/v1/experiments", params={"limit": 2}).json()
    assert [e["id"] for e in page["data"]] == ids[::-1][:2]
    rest = api_client.get("/v1/experiments", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["data"][0]["id"] == ids[0]
    for experiment_id in ids:
        wait_experiment(api_client, experiment_id)
    assert api_client.get("/v1/experiments/nope").status_code == 404


def test_lr_finder_suggests_lr_inside_range_and_feeds_a_grid(api_client: Any, worker: Any) -> None:
    body = {"dataset": "digits", "optimizer": {"name": "sgd"}, "min_lr": 1e-5, "max_lr": 10, "steps": 100}
    resp = api_client.post("/v1/lr-finder", json=body)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]

    def done() -> dict[str, Any] | None:
        job = api_client.get(f"/v1/lr-finder/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_for(done, 60, "the lr finder")
    assert job["status"] == "succeeded", job
    assert 1e-5 < job["suggested_lr"] < 10
    # every rule's pick, the default (minimum/10) first and the same as suggested_lr and rule
    assert [s["name"] for s in job["suggestions"]] == ["minimum", "valley", "steepest"]
    assert all(s["lr"] is not None and s["rule"].startswith(s["name"] + ": ") for s in job["suggestions"])
    assert (job["suggested_lr"], job["rule"]) == (job["suggestions"][0]["lr"], job["suggestions"][0]["rule"])
    smoothed = [p["smoothed_loss"] for p in job["points"] if p["smoothed_loss"] is not None]
    bottom = next(p["lr"] for p in job["points"] if p["smoothed_loss"] == min(smoothed))
    assert job["suggested_lr"] == pytest.approx(bottom / 10)
    lrs = [p["lr"] for p in job["points"]]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert job["stopped_early"] is True and len(job["points"]) < 100  # the loss exploded before max_lr
    assert job["suggested_grid"] and min(job["suggested_grid"]) <= job["suggested_lr"] <= max(job["suggested_grid"])
    # the finder's answer is the next step's input
    exp = api_client.post(
        "/v1/experiments",
        json={
            "name": "around the suggestion",
            "base": {"optimizer": {"name": "sgd"}, "epochs": 1},
            "grid": {"lr": job["suggested_grid"]},
        },
    )
    assert exp.status_code == 202, exp.text
    for run_id in exp.json()["runs"]:
        assert wait_run(api_client, run_id)["status"] in ("succeeded", "diverged")
    listed = api_client.get("/v1/lr-finder").json()["data"]
    assert job_id in [j["id"] for j in listed]


def test_lr_finder_rejects_bad_range(api_client: Any) -> None:
    resp = api_client.post("/v1/lr-finder", json={"min_lr": 1.0, "max_lr": 0.1})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "max_lr"]
    assert api_client.get("/v1/lr-finder/unknown").status_code == 404
