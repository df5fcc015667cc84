"""Compare, replicates, charts and downsampling over the real stack (one experiment shared by the tests)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.conftest import wait_run
from tests.e2e.test_experiments import wait_experiment

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def lr_experiment(api_client: Any, worker: Any) -> dict[str, Any]:
    """SGD on digits at a good lr and at lr 1000 (diverges), two seeds each."""
    body = {
        "name": "sgd lr sweep",
        "base": {"dataset": "digits", "optimizer": {"name": "sgd", "momentum": 0.9}, "epochs": 4},
        "grid": {"lr": [0.05, 1000.0], "seed": [0, 1]},
    }
    created = api_client.post("/v1/experiments", json=body).json()
    return wait_experiment(api_client, created["id"])


def test_compare_ranks_and_summarizes_from_curves(api_client: Any, lr_experiment: dict[str, Any]) -> None:
    resp = api_client.get(f"/v1/experiments/{lr_experiment['id']}/compare", params={"target": 0.5})
    assert resp.status_code == 200, resp.text
    cmp = resp.json()
    assert cmp["metric"] == "best_val_accuracy" and cmp["mode"] == "max"
    statuses = [r["status"] for r in cmp["runs"]]
    assert statuses[:2] == ["succeeded", "succeeded"] and statuses[2:] == ["diverged", "diverged"]
    for run in cmp["runs"]:
        pts = run["points"]
        curve = api_client.get(f"/v1/runs/{run['run_id']}/curves").json()["points"]
        assert pts == curve
        accs = [p["val_accuracy"] for p in pts]
        s = run["summary"]
        assert s["best_val_accuracy"] == max(accs) and s["best_epoch"] == accs.index(max(accs)) + 1
        assert s["final_val_loss"] == pts[-1]["val_loss"]
        assert s["min_val_loss"] == min(p["val_loss"] for p in pts if p["val_loss"] is not None)
        assert s["seconds"] == pytest.approx(sum(p["seconds"] for p in pts))
        reached = [p["epoch"] for p in pts if p["val_accuracy"] >= 0.5]
        assert s["epochs_to_target"] == (reached[0] if reached else None)
    good, bad = cmp["runs"][0], cmp["runs"][-1]
    assert good["summary"]["best_val_accuracy"] >= cmp["runs"][1]["summary"]["best_val_accuracy"]
    assert bad["summary"]["diverged_at"] in (1, 2) and bad["summary"]["reason"]
    assert "lr=1000" in bad["label"]


def test_compare_groups_seeds_and_gives_a_verdict(api_client: Any, lr_experiment: dict[str, Any]) -> None:
    cmp = api_client.get(f"/v1/experiments/{lr_experiment['id']}/compare").json()
    groups = {g["label"]: g for g in cmp["groups"]}
    assert set(groups) == {"lr=0.05", "lr=1000"}
    good = groups["lr=0.05"]
    assert good["n"] == 2 and sorted(good["seeds"]) == [0, 1]
    by_seed = {r["spec"]["seed"]: r for r in cmp["runs"] if r["label"].startswith("lr=0.05")}
    first = [by_seed[s]["points"][0]["val_accuracy"] for s in (0, 1)]
    assert good["epochs"][0]["val_accuracy_mean"] == pytest.approx(sum(first) / 2)
    assert good["mean"] == pytest.approx(sum(by_seed[s]["summary"]["best_val_accuracy"] for s in (0, 1)) / 2)
    verdict = cmp["verdict"]
    assert verdict["better"] == "lr=0.05" and verdict["other"] == "lr=1000"
    assert verdict["method"] == "paired t" and verdict["n_pairs"] == 2
    assert verdict["difference"] > 0 and verdict["ci_low"] <= verdict["difference"] <= verdict["ci_high"]


def test_compare_by_min_metric_reverses_direction(api_client: Any, lr_experiment: dict[str, Any]) -> None:
    cmp = api_client.get(f"/v1/experiments/{lr_experiment['id']}/compare", params={"metric": "min_val_loss"}).json()
    assert cmp["mode"] == "min"
    losses = [r["summary"]["min_val_loss"] for r in cmp["runs"] if r["status"] == "succeeded"]
    assert losses == sorted(losses)
    bad = api_client.get(f"/v1/experiments/{lr_experiment['id']}/compare", params={"metric": "accuracy"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "metric"]


def test_compare_any_runs_across_experiments(api_client: Any, lr_experiment: dict[str, Any], worker: Any) -> None:
    other = api_client.post("/v1/runs", json={"dataset": "digits", "epochs": 2}).json()["id"]
    wait_run(api_client, other)
    ids = [lr_experiment["runs"][0]["id"], other]
    cmp = api_client.get("/v1/compare", params={"runs": ",".join(ids)}).json()
    assert {r["run_id"] for r in cmp["runs"]} == set(ids)
    assert [r for r in cmp["runs"] if r["run_id"] == other][0]["label"] == "adam lr=0.001 seed=0"
    missing = api_client.get("/v1/compare", params={"runs": f"{other},nope"})
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["query", "runs"]


@pytest.mark.parametrize("metric", ["val_accuracy", "val_loss", "train_accuracy", "train_loss", "lr"])
def test_experiment_chart_svg_has_one_series_per_run(
    api_client: Any, lr_experiment: dict[str, Any], metric: str
) -> None:
    resp = api_client.get(f"/v1/experiments/{lr_experiment['id']}/charts/{metric}.svg")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(resp.content)
    ids = {el.get("id") for el in root.iter() if (el.get("id") or "").startswith("series-")}
    assert ids == {f"series-{i}" for i in range(4)}
    assert resp.content == api_client.get(f"/v1/experiments/{lr_experiment['id']}/charts/{metric}.svg").content


def test_experiment_chart_png_and_log_scale(api_client: Any, lr_experiment: dict[str, Any]) -> None:
    from PIL import Image

    resp = api_client.get(f"/v1/experiments/{lr_experiment['id']}/charts/val_loss.png", params={"log": True})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(resp.content))
    assert image.format == "PNG" and image.size[0] > 300
    bad = api_client.get(f"/v1/experiments/{lr_experiment['id']}/charts/accuracy.svg")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "chart"]


def test_long_curve_downsampled_on_request(api_client: Any, worker: Any) -> None:
    run_id = api_client.post("/v1/runs", json={"dataset": "spirals", "epochs": 30, "batch_size": 512}).json()["id"]
    assert wait_run(api_client, run_id)["status"] == "succeeded"
    whole = api_client.get(f"/v1/runs/{run_id}/curves").json()
    assert whole["sampled"] is False and whole["n_raw"] == whole["n_returned"] == 30
    thin = api_client.get(f"/v1/runs/{run_id}/curves", params={"max_points": 10}).json()
    assert thin["sampled"] is True and thin["method"] and thin["n_raw"] == 30 and thin["n_returned"] == 10
    epochs = [p["epoch"] for p in thin["points"]]
    assert epochs[0] == 1 and epochs[-1] == 30 and epochs == sorted(epochs)
    by_epoch = {p["epoch"]: p for p in whole["points"]}
    assert all(by_epoch[p["epoch"]] == p for p in thin["points"])
