"""Bad input gets a 422 naming the field (never a 500); unknown ids get 404."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.service


def post(client: Any, body: Any) -> Any:
    return client.post("/v1/runs", json=body)


def locs(resp: Any) -> list[list[Any]]:
    return [d["loc"] for d in resp.json()["detail"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"dataset": "imagenet"}, ["body", "dataset", "name"]),
        ({"model": "transformer"}, ["body", "model"]),
        ({"optimizer": {"name": "lion", "lr": 0.1}}, ["body", "optimizer"]),
        ({"optimizer": {"name": "adam", "lr": 0}}, ["body", "optimizer", "adam", "lr"]),
        ({"optimizer": {"name": "adam", "lr": -1}}, ["body", "optimizer", "adam", "lr"]),
        ({"optimizer": {"name": "sgd", "lr": 1001}}, ["body", "optimizer", "sgd", "lr"]),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 1.5}}, ["body", "optimizer", "sgd", "momentum"]),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True}}, ["body", "optimizer", "sgd", "nesterov"]),
        ({"optimizer": {"name": "adam", "betas": [0.9, 1.0]}}, ["body", "optimizer", "adam", "betas", 1]),
        ({"optimizer": {"name": "rmsprop", "alpha": 2}}, ["body", "optimizer", "rmsprop", "alpha"]),
        ({"optimizer": {"name": "adadelta", "rho": -0.1}}, ["body", "optimizer", "adadelta", "rho"]),
        ({"optimizer": {"name": "adam", "momentun": 0.9}}, ["body", "optimizer", "adam", "momentun"]),
        ({"epochs": 0}, ["body", "epochs"]),
        ({"epochs": 10001}, ["body", "epochs"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"device": "tpu"}, ["body", "device"]),
        ({"schedule": {"kind": "multistep", "milestones": [5, 3]}}, ["body", "schedule", "multistep", "milestones"]),
        ({"schedule": {"kind": "piecewise", "boundaries": [2], "values": [0.1]}}, ["body", "schedule", "piecewise"]),
        ({"schedule": {"kind": "warp"}}, ["body", "schedule"]),
        ({"dataset": {"path": "../etc/passwd"}}, ["body", "dataset", "path"]),
        ({"dataset": {"path": "/etc/passwd"}}, ["body", "dataset", "path"]),
    ],
)
def test_create_run_rejects_bad_field(api_client: Any, body: dict[str, Any], loc: list[Any]) -> None:
    resp = post(api_client, body)
    assert resp.status_code == 422, resp.text
    assert loc in locs(resp), resp.json()


@pytest.mark.parametrize("raw", ['{"optimizer": {"name": "adam", "lr": NaN}}', '{"epochs": Infinity}'])
def test_create_run_rejects_non_finite_numbers(api_client: Any, raw: str) -> None:
    resp = api_client.post("/v1/runs", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text


def test_create_run_rejects_malformed_json(api_client: Any) -> None:
    resp = api_client.post("/v1/runs", content=b'{"epochs": 3,', headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["type"] == "json_invalid"
    assert resp.json()["detail"][0]["loc"][0] == "body"


def test_get_run_unknown_is_404(api_client: Any) -> None:
    for path in (f"/v1/runs/{uuid.uuid4()}", f"/v1/runs/{uuid.uuid4()}/curves", "/v1/runs/not-a-uuid"):
        resp = api_client.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["detail"][0]["loc"] == ["path", "run_id"]
    assert api_client.post(f"/v1/runs/{uuid.uuid4()}/cancel").status_code == 404


def test_list_runs_rejects_bad_cursor_and_status(api_client: Any) -> None:
    resp = api_client.get("/v1/runs", params={"cursor": "garbage"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "cursor"]
    resp = api_client.get("/v1/runs", params={"status": "exploded"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "status"]
