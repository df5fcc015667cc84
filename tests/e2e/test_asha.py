"""Successive halving through the service: an experiment's early_stopping stops runs at rungs, fused or not."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from lrlab.db import session_scope
from lrlab.models import RungReport
from lrlab.search.asha import judge
from tests.e2e.test_experiments import wait_experiment

pytestmark = pytest.mark.service

# 3 optimizers x 3 lrs on digits, 4 epochs: rungs at 1 and 3 (reduction factor 3)
GRID = {"optimizer": [{"name": "sgd"}, {"name": "adam"}, {"name": "rmsprop"}], "lr": [1e-4, 1e-3, 1e-2]}
BASE = {"dataset": "digits", "epochs": 4, "device": "cpu"}


def _experiment(client: Any, execution: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    body = {"name": f"asha {execution}", "base": BASE, "grid": GRID, "execution": execution, "early_stopping": {}}
    created = client.post("/v1/experiments", json=body)
    assert created.status_code == 202, created.text
    exp = wait_experiment(client, created.json()["id"], timeout=180)
    return exp, [client.get(f"/v1/runs/{r['id']}").json() for r in exp["runs"]]


def _reports(experiment_id: str) -> list[RungReport]:
    with session_scope() as s:
        return list(s.scalars(select(RungReport).where(RungReport.cohort == experiment_id).order_by(RungReport.id)))


def _check(exp: dict[str, Any], runs: list[dict[str, Any]], min_stopped: int) -> None:
    assert exp["early_stopping"] == {"kind": "asha", "metric": "val_accuracy", "grace_epochs": 1, "reduction_factor": 3}
    stopped = [r for r in runs if r["status"] == "stopped"]
    full = [r for r in runs if r["status"] != "stopped"]
    assert exp["status"] == "finished" and len(stopped) >= min_stopped, exp["counts"]
    for r in stopped:  # its curve is kept, up to the rung it stopped at
        s = r["summary"]
        assert s["stopped_at"] in (1, 3) and s["epochs_completed"] == s["stopped_at"], s
        assert "successive halving" in s["reason"]
    for r in full:
        assert r["status"] in ("succeeded", "diverged") and r["summary"]["stopped_at"] is None
        assert r["status"] == "diverged" or r["summary"]["epochs_completed"] == 4
    # every run reported at rung 1; the decisions are the rule's, replayed in the order they were made
    reports = _reports(exp["id"])
    assert {x.run_id for x in reports if x.rung == 1} == {r["id"] for r in runs}
    for rung in (1, 3):
        at = [x for x in reports if x.rung == rung]
        assert all(x.continued is not None for x in at)
        stopped_here = {r["id"] for r in stopped if r["summary"]["stopped_at"] == rung}
        assert {x.run_id for x in at if not x.continued} == stopped_here


def test_fused_grid_stops_the_bottom_at_each_rung(api_client: Any, worker: Any) -> None:
    exp, runs = _experiment(api_client, "fused")
    assert exp["execution"] == "fused" and len({r["pack_id"] for r in runs}) == 1
    _check(exp, runs, min_stopped=5)  # groups of three reach rung 1 together, each judged with those before
    # the first group of the pack (one optimizer) reached rung 1 together: judged as one, they kept the top third
    reports = [x for x in _reports(exp["id"]) if x.rung == 1]
    first_three = reports[:3]
    assert [x.continued for x in first_three] == judge([], [x.score for x in first_three], 3, "max")


def test_separate_runs_stopped_between_epochs(api_client: Any, worker: Any) -> None:
    exp, runs = _experiment(api_client, "separate")
    assert exp["execution"] == "separate" and all(r["pack_id"] is None for r in runs)
    # one worker trains them one after another: each is judged on arrival against the runs before it, and the
    # first to reach a rung always goes on (ASHA's asynchronous promotion), so fewer stop than in a pack
    _check(exp, runs, min_stopped=1)
    reports = [x for x in _reports(exp["id"]) if x.rung == 1]
    replay = [judge([y.score for y in reports[:i]], [x.score], 3, "max")[0] for i, x in enumerate(reports)]
    assert [x.continued for x in reports] == replay


def test_stopped_runs_rank_after_full_runs_and_filter(api_client: Any, worker: Any) -> None:
    exp, runs = _experiment(api_client, "fused")
    ranked = api_client.get(f"/v1/experiments/{exp['id']}/compare").json()["runs"]
    statuses = [r["status"] for r in ranked]
    first_stopped = statuses.index("stopped")
    assert all(s != "succeeded" for s in statuses[first_stopped:]), statuses
    listed = api_client.get("/v1/runs", params={"status": "stopped", "limit": 200}).json()["data"]
    ours = {r["id"] for r in runs}
    assert {r["id"] for r in listed if r["id"] in ours} == {r["id"] for r in runs if r["status"] == "stopped"}
    assert all(r["status"] == "stopped" for r in listed)


def test_early_stopping_refused_at_its_field(api_client: Any) -> None:
    body = {"name": "x", "base": {"epochs": 3}, "grid": {"lr": [0.1]}, "early_stopping": {"grace_epochs": 3}}
    answer = api_client.post("/v1/experiments", json=body)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "early_stopping", "grace_epochs"]
    body["early_stopping"] = {"kind": "median"}
    assert api_client.post("/v1/experiments", json=body).json()["detail"][0]["loc"][:2] == ["body", "early_stopping"]
