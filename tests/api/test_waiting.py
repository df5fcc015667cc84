"""A queued run says why it waits when no live worker serves its queue (device cuda with no GPU worker)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete

pytestmark = pytest.mark.service

CUDA_RUN = {"dataset": "blobs", "epochs": 1, "device": "cuda"}


def _gpu_heartbeat(age: timedelta) -> str:
    from lrlab.db import session_scope
    from lrlab.models import WorkerHeartbeat, utcnow

    name = f"gpu-{uuid.uuid4().hex[:8]}@test"
    with session_scope() as s:
        s.add(WorkerHeartbeat(hostname=name, queues="gpu,cpu", has_gpu=True, last_seen_at=utcnow() - age))
    return name


def _forget(name: str) -> None:
    from lrlab.db import session_scope
    from lrlab.models import WorkerHeartbeat

    with session_scope() as s:
        s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.hostname == name))


def test_cuda_run_without_a_live_gpu_worker_says_why_it_waits(api_client: Any) -> None:
    ghost = _gpu_heartbeat(timedelta(hours=1))  # a GPU worker killed an hour ago is not a live one
    created = api_client.post("/v1/runs", json=CUDA_RUN)
    assert created.status_code == 202, created.text
    run_id = created.json()["id"]
    try:
        run = api_client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "queued" and run["queue"] == "gpu"
        assert run["waiting_reason"].startswith("no live GPU worker")
        assert '"device": "cpu"' in run["waiting_reason"]  # says what to do about it
        listed = {r["id"]: r for r in api_client.get("/v1/runs", params={"status": "queued"}).json()["data"]}
        assert listed[run_id]["waiting_reason"] == run["waiting_reason"]

        live = _gpu_heartbeat(timedelta(0))  # a GPU worker appears: the run no longer waits for a missing one
        try:
            assert api_client.get(f"/v1/runs/{run_id}").json()["waiting_reason"] is None
        finally:
            _forget(live)
        assert api_client.get(f"/v1/runs/{run_id}").json()["waiting_reason"] is not None
    finally:
        _forget(ghost)
        cancelled = api_client.post(f"/v1/runs/{run_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["waiting_reason"] is None


def test_openapi_documents_waiting_reason(api_client: Any) -> None:
    props = api_client.get("/openapi.json").json()["components"]["schemas"]["RunPublic"]["properties"]
    assert "no live worker" in props["waiting_reason"]["description"]
