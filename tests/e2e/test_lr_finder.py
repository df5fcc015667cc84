"""lr range tests over the real stack: bounds that keep every lr finite, a poison job that ends, cancel."""

from __future__ import annotations

from typing import Any

import pytest

from lrlab import auth
from lrlab.db import session_scope
from lrlab.models import LrFinder, utcnow
from lrlab.schemas.experiments import LrFinderCreate
from tests.conftest import wait_for
from tests.rows import send

pytestmark = pytest.mark.service


def wait_job(client: Any, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/lr-finder/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    return wait_for(done, timeout, f"lr-finder job {job_id}", interval=0.2)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"dataset": "blobs", "min_lr": 5e-324, "max_lr": 10}, ["body", "min_lr"]),  # 10 / 5e-324 overflows
        ({"min_lr": 1e-11}, ["body", "min_lr"]),
        ({"min_lr": 1000}, ["body", "min_lr"]),
        ({"max_lr": 1001}, ["body", "max_lr"]),
        ({"min_lr": 0.1, "max_lr": 0.1}, ["body", "max_lr"]),
    ],
)
def test_lr_finder_refuses_a_range_whose_sweep_could_leave_the_finite_numbers(
    api_client: Any, body: dict[str, Any], loc: list[str]
) -> None:
    resp = api_client.post("/v1/lr-finder", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == loc
    bounds = api_client.get("/openapi.json").json()["components"]["schemas"]["LrFinderCreate"]["properties"]
    assert bounds["min_lr"]["minimum"] == 1e-10 and bounds["max_lr"]["maximum"] == 1000


def test_poison_job_made_before_the_bounds_ends_failed_saying_why(api_client: Any, api_key: str, worker: Any) -> None:
    """The job of the report, stored before min_lr had a lower bound: its sweep's lrs overflowed to inf, the
    result could not be stored, and it failed again on every delivery. It ends failed now, at its first claim."""
    spec = LrFinderCreate.model_validate({"dataset": "blobs", "device": "cpu", "steps": 10}).model_dump(mode="json")
    with session_scope() as s:
        job = LrFinder(
            owner=auth.owner_of(s, api_key),
            status="queued",
            spec={**spec, "min_lr": 5e-324, "max_lr": 10.0},
            queue="cpu",
            created_at=utcnow(),
        )
        s.add(job)
        s.flush()
        job_id = job.id
    assert send("lr_finders", [job_id], "cpu")
    done = wait_job(api_client, job_id)
    assert done["status"] == "failed", done
    assert "min_lr" in done["error"] and done["spec"]["min_lr"] == 5e-324  # shown as it was asked for
    with session_scope() as s:
        assert s.get(LrFinder, job_id).attempts == 1  # type: ignore[union-attr]


def test_cancel_lr_finder_queued_at_once_running_within_steps_finished_409(api_client: Any, worker: Any) -> None:
    # queued (cuda: no GPU worker here takes it): cancelled now, and never swept
    queued = api_client.post("/v1/lr-finder", json={"device": "cuda", "steps": 10}).json()
    resp = api_client.post(f"/v1/lr-finder/{queued['id']}/cancel")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["status"], resp.json()["cancel_requested"]) == ("cancelled", True)

    # running: a long sweep whose loss never explodes (lr stays tiny), stopped within a few steps
    body = {"dataset": "digits", "device": "cpu", "min_lr": 1e-10, "max_lr": 1e-8, "steps": 10_000}
    job_id = api_client.post("/v1/lr-finder", json=body).json()["id"]
    wait_for(lambda: api_client.get(f"/v1/lr-finder/{job_id}").json()["status"] == "running", 60, "the sweep")
    resp = api_client.post(f"/v1/lr-finder/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["cancel_requested"] is True
    done = wait_job(api_client, job_id, timeout=30)
    assert done["status"] == "cancelled", done
    assert 0 < len(done["points"]) < 10_000 and done["reason"] == "stopped on request"

    for finished in (queued["id"], job_id):
        resp = api_client.post(f"/v1/lr-finder/{finished}/cancel")
        assert resp.status_code == 409 and resp.json()["detail"][0]["loc"] == ["path", "job_id"]
    assert api_client.post("/v1/lr-finder/unknown/cancel").status_code == 404
