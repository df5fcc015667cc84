"""Searches through the service: an Optuna study in lrlab's database, trials as runs, batches fused, ASHA inside.

A crashed worker or api loses no trial and tells none twice: a worker killed mid-batch (its runs resume on
another worker, the search goes on), and a trial asked but never given a run (the asker died before its
commit) is found and trained.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import select, update

from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import LOCAL_OWNER, CurvePoint, Run, Search, utcnow
from lrlab.schemas.search import SearchCreate
from lrlab.search import driver
from lrlab.search import study as optuna_study
from tests.conftest import make_key, start_worker, stop_process, wait_for

pytestmark = pytest.mark.service

SPACE = {"lr": {"log_uniform": [1e-4, 1e-1]}, "optimizer": {"choice": ["sgd", "adam"]}}
BASE = {"dataset": "digits", "epochs": 3, "device": "cpu"}
FAST = {
    "LRLAB_LEASE_SECONDS": "2",
    "LRLAB_RECONCILE_SECONDS": "0.5",
    "LRLAB_CHECKPOINT_SECONDS": "0",
    "LRLAB_PROGRESS_FLUSH_SECONDS": "0",
    "LRLAB_REDISPATCH_SECONDS": "3",
}


def wait_search(client: Any, search_id: str, timeout: float = 180) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/searches/{search_id}").json()
        return body if body["status"] not in ("queued", "running") else None

    return wait_for(done, timeout, f"search {search_id}", interval=0.3)  # type: ignore[no-any-return]


def _runs(search_id: str) -> list[Run]:
    with session_scope() as s:
        return list(s.scalars(select(Run).where(Run.search_id == search_id).order_by(Run.trial)))


def test_search_trains_its_trials_as_runs(api_client: Any, worker: Any, service_env: dict[str, str]) -> None:
    body = {"name": "tpe", "base": BASE, "space": SPACE, "trials": 6, "parallel": 3, "seed": 1}
    created = api_client.post("/v1/searches", json=body, headers={"Idempotency-Key": "search-1"})
    assert created.status_code == 202, created.text
    again = api_client.post("/v1/searches", json=body, headers={"Idempotency-Key": "search-1"})
    assert again.json() == created.json()  # idempotent: one search
    search_id, study_name = created.json()["id"], created.json()["study_name"]
    assert created.headers["location"] == f"/v1/searches/{search_id}"
    found = wait_search(api_client, search_id)
    assert found["status"] == "succeeded", found
    trials = found["trials"]
    assert [t["number"] for t in trials] == list(range(6))
    for t in trials:
        assert t["state"] in ("complete", "pruned") and t["run_id"] is not None
        assert t["status"] in ("succeeded", "diverged") and t["epochs_completed"] in (1, 2, 3)
        run = api_client.get(f"/v1/runs/{t['run_id']}").json()
        assert run["spec"]["optimizer"]["name"] == t["params"]["optimizer"]
        assert run["spec"]["optimizer"]["lr"] == pytest.approx(t["params"]["lr"])
        if t["state"] == "complete":
            assert t["value"] == run["summary"]["best_val_accuracy"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert found["best"]["number"] == max(complete, key=lambda t: t["value"])["number"]
    assert set(found["importances"]) <= {"lr", "optimizer"}
    # batches of 3, each one fused pack; the second asked after the first had ended
    runs = _runs(search_id)
    packs = [{r.pack_id for r in runs[:3]}, {r.pack_id for r in runs[3:]}]
    assert all(len(p) == 1 and None not in p for p in packs) and packs[0] != packs[1]
    assert max(r.finished_at for r in runs[:3]) <= min(r.created_at for r in runs[3:])  # type: ignore[type-var]
    # the study is Optuna's, in lrlab's database: every trial told once, each epoch an intermediate value
    study = optuna.load_study(study_name=study_name, storage=service_env["LRLAB_DATABASE_URL"])
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    for t, run in zip(study.trials, runs, strict=True):
        with session_scope() as s:
            epochs = sorted(s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == run.id)))
        assert sorted(t.intermediate_values) == epochs
    listed = api_client.get("/v1/searches").json()["data"]
    assert search_id in [s["id"] for s in listed] and all(s["trials"] == [] for s in listed)


def test_search_with_early_stopping_prunes_trials(api_client: Any, worker: Any) -> None:
    body = {
        "name": "asha",
        "base": {**BASE, "epochs": 4},
        "space": SPACE,
        "trials": 6,
        "parallel": 6,
        "sampler": "random",
        "early_stopping": {"grace_epochs": 1, "reduction_factor": 3},
    }
    found = wait_search(api_client, api_client.post("/v1/searches", json=body).json()["id"])
    assert found["status"] == "succeeded"
    stopped = [t for t in found["trials"] if t["status"] == "stopped"]
    assert len(stopped) >= 3 and all(t["state"] == "pruned" for t in stopped)
    assert all(t["epochs_completed"] in (1, 3) for t in stopped)


def test_search_refused_at_its_field_and_scoped_to_its_owner(api_client: Any, worker: Any) -> None:
    bad = api_client.post("/v1/searches", json={"base": BASE, "space": {"lr": {"log_uniform": [1e-5, 5000]}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "space", "lr"]
    bad = api_client.post("/v1/searches", json={"base": BASE, "space": {"model.width": {"int": [4, 8]}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "space", "model.width"]
    body = {"base": {**BASE, "epochs": 200}, "space": SPACE, "trials": 4, "parallel": 2}
    search_id = api_client.post("/v1/searches", json=body).json()["id"]
    other = {"Authorization": f"Bearer {make_key('someone else')}"}
    assert api_client.get(f"/v1/searches/{search_id}", headers=other).status_code == 404
    assert api_client.post(f"/v1/searches/{search_id}/cancel", headers=other).status_code == 404
    assert search_id not in [s["id"] for s in api_client.get("/v1/searches", headers=other).json()["data"]]
    wait_for(lambda: len(_runs(search_id)) == 2, 60, "the first batch")
    cancelled = api_client.post(f"/v1/searches/{search_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    wait_for(lambda: all(r.status == "cancelled" for r in _runs(search_id)), 60, "its runs to stop")
    assert len(_runs(search_id)) == 2  # no more trials asked


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop_process(proc)


def _search_on(queue: str, request: SearchCreate) -> str:
    """A search whose trials go to `queue` (a private one: the session's worker serves `cpu`)."""
    with session_scope() as s:
        search, _ = driver.create(s, request, owner=LOCAL_OWNER)
        search.queue = queue
        messages = outbox.searches(s, [search])
        search_id = search.id
    outbox.send(messages)
    return search_id


def _search_row(search_id: str) -> Search:
    with session_scope() as s:
        found = s.get(Search, search_id)
        assert found is not None
        return found


def test_killed_worker_loses_no_trial_and_tells_none_twice(
    service_env: dict[str, str], workers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    env = {**service_env, **FAST}
    request = SearchCreate.model_validate(
        {"base": {**BASE, "epochs": 30, "batch_size": 32}, "space": SPACE, "trials": 4, "parallel": 2, "seed": 5}
    )
    first = start_worker(env, "--queues", "searchcrash", log=tmp_path / "first.log")
    workers.append(first)
    search_id = _search_on("searchcrash", request)

    def training() -> bool:
        runs = _runs(search_id)
        with session_scope() as s:
            points = s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id.in_([r.id for r in runs]))).all()
        return len(runs) == 2 and len(points) >= 4

    wait_for(training, 120, "the first batch to train")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    workers.append(start_worker(env, "--queues", "searchcrash", log=tmp_path / "second.log"))
    wait_for(lambda: _search_row(search_id).status == "succeeded", 240, "the search to end")

    runs = _runs(search_id)
    assert [r.trial for r in runs] == [0, 1, 2, 3] and all(r.status == "succeeded" for r in runs)
    assert any(r.attempts == 2 for r in runs[:2])  # the first batch was resumed on the second worker
    study = optuna.load_study(study_name=_search_row(search_id).study_name, storage=env["LRLAB_DATABASE_URL"])
    assert len(study.trials) == 4  # no trial lost, none asked twice
    for t, run in zip(study.trials, runs, strict=True):
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.value == (run.summary or {})["best_val_accuracy"]
        assert len(t.intermediate_values) == 30


def test_trial_asked_but_never_given_a_run_is_trained(service_env: dict[str, str], q: tuple[str, Any]) -> None:
    """The asker died between Optuna's commit and lrlab's: the next advance finds the trial and makes its run."""
    queue, waiting = q
    url = service_env["LRLAB_DATABASE_URL"]
    request = SearchCreate.model_validate({"base": BASE, "space": SPACE, "trials": 3, "parallel": 1})
    search_id = _search_on(queue, request)
    driver.advance(search_id)  # what the worker would do: trial 0 and its run
    name = _search_row(search_id).study_name
    assert [r.trial for r in _runs(search_id)] == [0]
    optuna_study.ask(url, name, request, 1)  # a second asker crashed right after Optuna's commit: trial 1
    driver.advance(search_id)
    assert [r.trial for r in _runs(search_id)] == [0, 1]
    driver.advance(search_id)  # again: nothing new (the batch is not over), no second run for a trial
    assert [r.trial for r in _runs(search_id)] == [0, 1]
    assert waiting() >= 3  # the advance message, then one train message for each trial's run


def test_search_whose_every_trial_fails_ends_failed_with_the_reason(
    service_env: dict[str, str], q: tuple[str, Any]
) -> None:
    """A trial's run that ends failed is told failed; when no trial came to a result the search is `failed` (a
    cancelled run counts as no result either), and the study says why each trial has no value."""
    queue, _ = q
    url = service_env["LRLAB_DATABASE_URL"]
    request = SearchCreate.model_validate({"base": BASE, "space": SPACE, "trials": 2, "parallel": 1})
    search_id = _search_on(queue, request)
    for ending in ("failed", "cancelled"):
        driver.advance(search_id)  # the next trial and its run, as the worker would
        (run,) = [r for r in _runs(search_id) if r.status == "queued"]
        with session_scope() as s:  # what a worker records when its trainer raises (or a cancel lands)
            s.execute(update(Run).where(Run.id == run.id).values(status=ending, error="boom", finished_at=utcnow()))
        assert _search_row(search_id).status == "running"
    driver.advance(search_id)
    found = _search_row(search_id)
    assert (found.status, found.error) == ("failed", "no trial trained to a result (every one failed)")
    assert found.finished_at is not None
    study = optuna.load_study(study_name=found.study_name, storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    driver.advance(search_id)  # a late advance (a redelivered message) asks nothing more
    assert len(_runs(search_id)) == 2 and len(optuna.load_study(study_name=found.study_name, storage=url).trials) == 2
