"""Population based training through the service: fused on one worker, distributed across workers."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import CurvePoint, Pbt, Run
from lrlab.pbt import rounds, views
from lrlab.pbt.checkpoints import get_checkpoint_store, member_key
from lrlab.schemas.pbt import PbtCreate
from lrlab.settings import get_settings
from tests.conftest import live_workers, start_worker, stop_process, wait_for, wait_run

pytestmark = pytest.mark.service

LR = (1e-4, 1e-1)
REQUEST: dict[str, Any] = {
    "name": "pbt",
    "base": {"dataset": "digits", "device": "cpu", "model": {"name": "mlp", "hidden": [32]}, "batch_size": 64},
    "population": 4,
    "epochs": 6,
    "interval": 2,
    "mutations": {"lr": {"log_uniform": list(LR)}},
    "seed": 7,
}
FAST = {
    "LRLAB_LEASE_SECONDS": "2",
    "LRLAB_RECONCILE_SECONDS": "0.5",
    "LRLAB_PROGRESS_FLUSH_SECONDS": "0",
    # a message the killed worker had taken but not started is lost with it (the broker gives it back
    # only after its visibility timeout): the reconciler sends such a queued member again after this
    "LRLAB_REDISPATCH_SECONDS": "3",
    "LRLAB_PBT_CHECKPOINTS": "all",  # the test retrains an epoch from each round's stored checkpoints
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


def check_rounds(body: dict[str, Any], request: dict[str, Any]) -> None:
    """Lineage after epochs 2 and 4 (none after the last), one replacement per round (ceil(4 x 0.25)), each
    target moved from the source's lr by a factor (0.8 or 1.2) or resampled, inside the bounds; every member's
    hyperparameters per epoch follow its lineage."""
    assert [e["epoch"] for e in body["lineage"]] == [2, 4]
    members = {m["member"]: m for m in body["members"]}
    assert all([p["epoch"] for p in m["points"]] == list(range(1, 7)) for m in members.values())
    for event in body["lineage"]:
        epoch, source, target = event["epoch"], members[event["source"]], members[event["target"]]
        score = {k: m["points"][epoch - 1]["val_accuracy"] for k, m in members.items()}
        assert score[event["source"]] >= max(score.values()) - 1e-12  # the top quarter is one member: the best
        assert score[event["target"]] <= min(score.values()) + 1e-12
        source_lr = source["hyperparameters_by_epoch"][epoch - 1]["values"]["lr"]
        assert event["old"] == target["hyperparameters_by_epoch"][epoch - 1]["values"]
        new_lr = event["new"]["lr"]
        assert LR[0] <= new_lr <= LR[1]
        if "lr" not in event["resampled"]:
            moved = [min(max(source_lr * f, LR[0]), LR[1]) for f in (0.8, 1.2)]
            assert any(math.isclose(new_lr, m, rel_tol=1e-12) for m in moved), (source_lr, new_lr)
        assert target["hyperparameters_by_epoch"][epoch]["values"] == event["new"]
        assert target["points"][epoch]["lr"] == pytest.approx(new_lr)  # the lr in force in epoch + 1
    best = body["best"]
    assert best is not None and best["epoch"] == 6 and len(best["schedule"]) == 6
    finals = [m["points"][-1]["val_accuracy"] for m in members.values()]
    assert best["val_accuracy"] == max(finals)


def test_fused_population_rounds_lineage_schedule_and_replay(api_client: Any, worker: Any) -> None:
    request = {**REQUEST, "execution": "fused"}
    first = api_client.post("/v1/pbt", json=request)
    assert first.status_code == 202, first.text
    body = wait_pbt(api_client, first.json()["id"])
    assert body["status"] == "succeeded" and body["execution"] == "fused", body
    check_rounds(body, request)
    runs = [api_client.get(f"/v1/runs/{m['run_id']}").json() for m in body["members"]]
    assert all(r["status"] == "succeeded" and r["pack_id"] is not None for r in runs)
    # the finished population keeps only its members' last checkpoints (LRLAB_PBT_CHECKPOINTS=final)
    wait_for(lambda: stored_epochs(body["id"]) == {k: [6] for k in range(4)}, 10, "the rounds' checkpoints pruned")

    # the same request again: the same population, exactly (same machine, one thread per worker)
    again = wait_pbt(api_client, api_client.post("/v1/pbt", json=request).json()["id"])
    assert again["lineage"] == body["lineage"]
    for ours, theirs in zip(body["members"], again["members"], strict=True):
        strip = [{k: v for k, v in p.items() if k != "seconds"} for p in ours["points"]]
        assert strip == [{k: v for k, v in p.items() if k != "seconds"} for p in theirs["points"]]

    # the discovered schedule: piecewise, replayable as a plain run from scratch
    schedule = api_client.get(f"/v1/pbt/{body['id']}/schedule").json()
    assert schedule["member"] == body["best"]["member"]
    lrs = [e["values"]["lr"] for e in body["best"]["schedule"]]
    piecewise = schedule["schedule"]
    assert piecewise["kind"] == "piecewise"
    assert piecewise["boundaries"] == [e for e in range(1, 6) if lrs[e] != lrs[e - 1]]
    replay = api_client.post("/v1/runs", json=schedule["run"])
    assert replay.status_code == 202, replay.text
    done = wait_run(api_client, replay.json()["id"])
    assert done["status"] == "succeeded"
    points = api_client.get(f"/v1/runs/{done['id']}/curves").json()["points"]
    assert [p["lr"] for p in points] == pytest.approx(lrs)

    chart = api_client.get(f"/v1/pbt/{body['id']}/charts/val_accuracy.svg")
    assert chart.status_code == 200 and chart.text.lstrip().startswith("<?xml")
    assert chart.text.count('id="exploit-') == len({e["target"] for e in body["lineage"]})
    listed = api_client.get("/v1/pbt").json()["data"]
    assert {body["id"], again["id"]} <= {p["id"] for p in listed}
    mine = next(p for p in listed if p["id"] == body["id"])
    assert mine["best"] == body["best"] and mine["lineage"] == body["lineage"]
    assert all(m["points"] == [] and m["hyperparameters_by_epoch"] == [] for m in mine["members"])  # light


def stored_epochs(pbt_id: str) -> dict[int, list[int]]:
    """member -> the epochs whose checkpoints the store holds for it."""
    root = get_settings().data_dir / "checkpoints" / "pbt" / pbt_id
    if not root.exists():
        return {}
    return {int(m.name): sorted(int(e.name) for e in m.iterdir() if e.name.isdigit()) for m in root.iterdir()}


def replay_epoch_after_exploit(pbt_id: str, event: dict[str, Any], threads: int = 1) -> dict[str, float]:
    """One epoch trained here from what the target resumed with: the source's checkpointed weights and
    optimizer state at the event's epoch, the target's own data order, the new hyperparameters."""
    import torch

    import trainer

    with session_scope() as s:
        pbt = s.get(Pbt, pbt_id)
        assert pbt is not None
        request = PbtCreate.model_validate(pbt.spec)
    store, epoch = get_checkpoint_store(), event["epoch"]
    own = trainer.checkpoint_from_bytes(store.get(member_key(pbt_id, event["target"], epoch)))
    source = trainer.checkpoint_from_bytes(store.get(member_key(pbt_id, event["source"], epoch)))
    own.model_state, own.optimizer_state = source.model_state, source.optimizer_state
    own.optimizer_state["lr"] = event["new"]["lr"]
    config = trainer.RunConfig.from_spec(request.member_spec(event["target"], event["new"]).to_json())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = trainer.train(config, start=own, should_stop=lambda: True)
    finally:
        torch.set_num_threads(previous)
    point = result.points[epoch]  # the checkpoint's points come first
    assert point.epoch == epoch + 1
    return {"train_loss": point.train_loss, "val_loss": point.val_loss, "val_accuracy": point.val_accuracy}


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_process(proc, timeout=10)


def test_distributed_population_across_two_workers_survives_one_dying(
    service_env: dict[str, str], workers: list[subprocess.Popen[bytes]], tmp_path: Path, api_client: Any
) -> None:
    env = {**service_env, **FAST}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers += [start_worker(env, "--queues", "pbtd", log=log) for log in logs]
    wait_for(lambda: live_workers("pbtd") >= 2, 60, "both workers' heartbeats")  # both consume from the start
    request = PbtCreate.model_validate({**REQUEST, "execution": "distributed", "epochs": 8})
    with session_scope() as s:
        owner = s.scalars(select(Run.owner).limit(1)).first() or "local"
    with session_scope() as s:
        pbt, runs, messages = rounds.create(s, request, owner=owner, queue="pbtd")
        pbt_id, run_ids = pbt.id, [r.id for r in runs]
    outbox.send(messages)

    def boundary() -> int:
        with session_scope() as s:
            found = s.get(Pbt, pbt_id)
            assert found is not None
            return found.boundary

    def log_text(i: int) -> str:
        return logs[i].read_text(errors="replace")

    try:
        wait_for(lambda: boundary() >= 2, 90, "the first round")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_text(0)[-2000:]}\n{log_text(1)[-2000:]}") from None
    assert all("lrlab.train_run" in log_text(i) for i in (0, 1)), "both workers trained members"
    os.killpg(workers[0].pid, signal.SIGKILL)  # mid-interval or between intervals: either must be survived
    workers[0].wait()

    def finished() -> bool:
        with session_scope() as s:
            found = s.get(Pbt, pbt_id)
            return found is not None and found.status not in ("queued", "running")

    try:
        wait_for(finished, 120, "the population to finish on the surviving worker")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log_text(1)[-3000:]}") from None
    body = api_client.get(f"/v1/pbt/{pbt_id}")
    if body.status_code == 404:  # created directly under another owner than the client's key
        with session_scope() as s:
            found = s.get(Pbt, pbt_id)
            assert found is not None
            public = views.to_public(s, found).model_dump(mode="json")
    else:
        public = body.json()
    assert public["status"] == "succeeded", public
    assert public["execution"] == "distributed"
    assert [e["epoch"] for e in public["lineage"]] == [2, 4, 6]
    with session_scope() as s:
        for run_id in run_ids:
            epochs = list(s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == run_id)))
            assert sorted(epochs) == list(range(1, 9))  # every epoch exactly once
    # exploit copied weights and optimizer state: one epoch from the source's checkpoint with the new
    # hyperparameters gives exactly the target's next point (distributed members train as trainer.train)
    members = {m["member"]: m for m in public["members"]}
    for event in public["lineage"]:
        got = replay_epoch_after_exploit(pbt_id, event)
        stored = members[event["target"]]["points"][event["epoch"]]
        for key, value in got.items():
            assert stored[key] == pytest.approx(value, rel=1e-6), (event, key)


def test_cancelling_one_member_cancels_its_population(api_client: Any, worker: Any) -> None:
    request = {**REQUEST, "execution": "fused", "epochs": 400, "interval": 200, "base": {**REQUEST["base"]}}
    created = api_client.post("/v1/pbt", json=request).json()
    victim = created["runs"][2]
    wait_run(api_client, victim, until=lambda _: len(api_client.get(f"/v1/runs/{victim}/curves").json()["points"]) > 1)
    cancelled = api_client.post(f"/v1/runs/{victim}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = wait_pbt(api_client, created["id"], timeout=60)
    assert body["status"] == "cancelled"
    for run_id in created["runs"]:
        run = wait_run(api_client, run_id, timeout=60)
        assert run["status"] == "cancelled" and run["summary"]["epochs_completed"] < 400
    wait_for(lambda: stored_epochs(created["id"]) == {}, 10, "a cancelled population's checkpoints removed")
