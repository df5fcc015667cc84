"""Population based training through the service: fused on one worker, distributed across workers."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytestmark = pytest.mark.service

REQUEST = {
    "name": "pbt",
    "base": {"dataset": "digits", "device": "cpu", "model": {"name": "mlp", "hidden": [32]}, "batch_size": 64},
    "population": 4,
    "epochs": 6,
    "interval": 2,
    "mutations": {"lr": {"log_uniform": [1e-4, 1e-1]}},
    "seed": 7,
}


def wait_pbt(client: Any, pbt_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        got = client.get(f"/v1/pbt/{pbt_id}")
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        if body["status"] not in ("queued", "running"):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"population {pbt_id} still {body['status']}: {body}")
        time.sleep(0.2)


def test_fused_population_runs_rounds_and_records_lineage(api_client: Any, worker: Any) -> None:
    created = api_client.post("/v1/pbt", json={**REQUEST, "execution": "fused"})
    assert created.status_code == 202, created.text
    body = wait_pbt(api_client, created.json()["id"])
    assert body["status"] == "succeeded", body
    assert [e["epoch"] for e in body["lineage"]] == [2, 4]
    assert all(len(m["points"]) == 6 for m in body["members"])
