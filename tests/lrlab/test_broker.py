"""`device: auto` goes to the gpu queue only while a GPU worker's heartbeat is fresh."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from lrlab.db import session_scope
from lrlab.models import WorkerHeartbeat, utcnow

pytestmark = pytest.mark.service


def _beat(seconds_ago: float) -> None:
    with session_scope() as s:
        s.merge(
            WorkerHeartbeat(
                hostname="gpu-box",
                queues="gpu,cpu",
                has_gpu=True,
                device_name="H100",
                last_seen_at=utcnow() - timedelta(seconds=seconds_ago),
            )
        )


def _cancel(client: Any, run_id: str) -> None:
    client.post(f"/v1/runs/{run_id}/cancel")


def test_auto_device_follows_live_gpu_worker(api_client: Any) -> None:
    try:
        _beat(0)
        run = api_client.post("/v1/runs", json={"device": "auto", "epochs": 1}).json()
        assert api_client.get(f"/v1/runs/{run['id']}").json()["queue"] == "gpu"
        _cancel(api_client, run["id"])
        _beat(600)  # stale: that worker is gone
        run = api_client.post("/v1/runs", json={"device": "auto", "epochs": 1}).json()
        assert api_client.get(f"/v1/runs/{run['id']}").json()["queue"] == "cpu"
        _cancel(api_client, run["id"])
        run = api_client.post("/v1/runs", json={"device": "cpu", "epochs": 1}).json()
        assert api_client.get(f"/v1/runs/{run['id']}").json()["queue"] == "cpu"
        _cancel(api_client, run["id"])
    finally:
        with session_scope() as s:
            s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.hostname == "gpu-box"))
