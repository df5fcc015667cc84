"""Advice through the service: an `lrlab api` and two `lrlab worker`s over a Postgres database and a Redis db of
their own (no other worker near them), with leases of seconds. Tiny budgets: the digits MLP, a few epochs, two
optimizers, two seeds.

One request becomes range tests, a search experiment, replicates and a verdict; each stage is an object the
test opens and checks against what the advice says about it. Then: a cancel stops every stage, and a worker
killed mid-stage leaves the pipeline to finish on the other, nothing created or trained twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from lrlab.advice import plan
from lrlab.client import Client
from lrlab.migrate import upgrade
from lrlab.models import CurvePoint, Experiment, LrFinder, Run
from lrlab.reports import analysis
from lrlab.schemas.compare import ReplicateGroup
from tests.conftest import ROOT, private_database, spare_redis_db, start_worker, stop_process, wait_for
from tests.example_plugin import ensure_example_plugin

pytestmark = pytest.mark.service

FAST = {
    "LRLAB_LEASE_SECONDS": "2",
    "LRLAB_RECONCILE_SECONDS": "0.5",
    "LRLAB_CHECKPOINT_SECONDS": "0",
    "LRLAB_PROGRESS_FLUSH_SECONDS": "0",
    "LRLAB_HEARTBEAT_SECONDS": "1",
    "LRLAB_HEARTBEAT_TTL_SECONDS": "5",
    # a message the killed worker had taken but not started is given back by the broker only after its
    # visibility timeout: the reconciler sends such a queued run again after this
    "LRLAB_REDISPATCH_SECONDS": "3",
    "LRLAB_TORCH_THREADS": "1",
    "LRLAB_AUTH": "disabled",
}
BASE = {"dataset": "digits", "model": {"name": "mlp", "hidden": [16]}, "epochs": 3, "batch_size": 64, "device": "cpu"}
REQUEST: dict[str, Any] = {"name": "tiny", "base": BASE, "optimizers": ["adam", "sgd"], "seeds": 2}


@dataclass
class Lab:
    url: str
    database: str
    env: dict[str, str]
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = create_engine(self.database, poolclass=NullPool)

    def client(self) -> Client:
        return Client(self.url, timeout=60)

    def session(self) -> Session:
        return Session(self.engine)

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("worker-*.log")))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    logs = tmp_path_factory.mktemp("advice")
    with private_database() as database, spare_redis_db() as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
        env.update(FAST, LRLAB_DATABASE_URL=database, LRLAB_BROKER_URL=broker, LRLAB_DATA_DIR=str(logs / "data"))
        upgrade(database)
        ensure_example_plugin()  # the workers offer its model and dataset
        port = _free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "lrlab.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=(logs / "api.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        found = Lab(f"http://127.0.0.1:{port}", database, env, logs)
        try:
            wait_for(lambda: _healthy(found.url, api, logs / "api.log"), 60, "the api", interval=0.3)
            add_worker(found)
            add_worker(found)
            yield found
        finally:
            for proc in [api, *found.workers]:
                stop_process(proc, timeout=10)


def _healthy(url: str, api: subprocess.Popen[bytes], log: Path) -> bool:
    if api.poll() is not None:
        raise AssertionError("the api exited:\n" + log.read_text()[-3000:])
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    return False


def add_worker(lab: Lab) -> subprocess.Popen[bytes]:
    """One more `lrlab worker` (solo pool) on the cpu queue, once its heartbeat is in (its hostname names its pid)."""
    proc = start_worker(lab.env, "--queues", "cpu", log=lab.logs / f"worker-{len(lab.workers)}.log")
    lab.workers.append(proc)
    query = text("SELECT count(*) FROM worker_heartbeat WHERE hostname LIKE :n")

    def live() -> bool:
        if proc.poll() is not None:
            raise AssertionError("a worker exited:\n" + lab.worker_logs())
        with lab.session() as s:
            return bool(s.scalar(query, {"n": f"lrlab-cpu-{proc.pid}@%"}))

    wait_for(live, 60, f"worker {proc.pid}'s heartbeat")
    return proc


def wait_finished(lab: Lab, advice_id: str, timeout: float = 240) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = httpx.get(f"{lab.url}/v1/advice/{advice_id}", timeout=30).json()
        return body if body["status"] not in ("queued", "running") else None

    try:
        return wait_for(done, timeout, f"advice {advice_id}", interval=0.5)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.worker_logs()}") from None


def get(lab: Lab, path: str) -> Any:
    resp = httpx.get(f"{lab.url}{path}", timeout=30)
    assert resp.status_code == 200, (path, resp.text)
    return resp.json()


# --- the whole answer ---------------------------------------------------------------------------


def check_advice(lab: Lab, advice: dict[str, Any], request: dict[str, Any], n_samples: int = 1797) -> None:
    """Every stage's objects exist and say what the advice says about them; the answer follows from them.
    `n_samples`: the dataset's, as the api counts it (a plugin's dataset: the quota's nominal 10,000)."""
    epochs, seeds = request["base"]["epochs"], request["seeds"]
    assert advice["status"] == "succeeded" and advice["stage"] == "verdict", advice
    # 1. a range test per optimizer; the search centres on its suggestion, spanning at least 30x
    tests = advice["range_tests"]
    assert [t["optimizer"] for t in tests] == ["adam", "sgd(momentum=0.9)"]
    lrs_by_optimizer = {}
    for test in tests:
        job = get(lab, f"/v1/lr-finder/{test['job_id']}")
        assert job["status"] == "succeeded" == test["status"]
        assert job["spec"]["optimizer"]["name"] == test["optimizer"][:4].rstrip("(")
        assert test["suggested_lr"] == job["suggested_lr"] == test["center_lr"]
        assert max(test["lrs"]) / min(test["lrs"]) >= 30
        assert min(test["lrs"]) < test["center_lr"] < max(test["lrs"])
        lrs_by_optimizer[test["optimizer"]] = test["lrs"]
    # 2. the search: one run per (optimizer, lr), best first
    search = advice["search"]
    experiment = get(lab, f"/v1/experiments/{search['experiment_id']}")
    assert experiment["status"] == "finished"
    assert len(experiment["runs"]) == sum(len(v) for v in lrs_by_optimizer.values()) == len(search["candidates"])
    tried = sorted((c["optimizer"], c["lr"]) for c in search["candidates"])
    assert tried == sorted((o, lr) for o, lrs in lrs_by_optimizer.items() for lr in lrs)
    scores = [c["best_val_accuracy"] for c in search["candidates"] if c["status"] in ("succeeded", "stopped")]
    ranked = [c for c in search["candidates"] if c["status"] in ("succeeded", "stopped")]
    for c in ranked:
        run = get(lab, f"/v1/runs/{c['run_id']}")
        assert run["experiment_id"] == search["experiment_id"]
        assert run["summary"]["best_val_accuracy"] == c["best_val_accuracy"]
    full = [c["best_val_accuracy"] for c in ranked if c["epochs"] == epochs]
    assert full == sorted(full, reverse=True) and scores
    # the finalists: the best lr of each optimizer
    best_of = {}
    for c in ranked:
        best_of.setdefault(c["optimizer"], c)
    assert search["finalists"] == [f"{c['optimizer']} {plan.lr_text(c['lr'])}" for c in best_of.values()]
    # 3. the replicates: the finalists over every seed, the other schedule (cosine) on the best of the search
    replicates = advice["replicates"]
    members = get(lab, f"/v1/experiments/{replicates['experiment_id']}")["runs"]
    assert len(members) == len(search["finalists"]) * seeds
    assert sorted({m["params"]["seed"] for m in members}) == list(range(seeds))
    others = get(lab, f"/v1/experiments/{replicates['schedules_experiment_id']}")["runs"]
    assert len(others) == seeds and all(m["params"]["schedule"].startswith("cosine") for m in others)
    best = search["finalists"][0]
    configurations = {c["label"]: c for c in replicates["configurations"]}
    assert set(configurations) == {*search["finalists"], f"{best} cosine"}
    groups = {}
    for label, c in configurations.items():
        runs = [get(lab, f"/v1/runs/{r}") for r in c["run_ids"]]
        assert all(r["status"] == "succeeded" and r["summary"]["epochs_completed"] == epochs for r in runs)
        values = [r["summary"]["best_val_accuracy"] for r in runs]
        assert c["val_accuracy"]["values"] == values and c["val_accuracy"]["seeds"] == [r["spec"]["seed"] for r in runs]
        assert c["val_accuracy"]["mean"] == pytest.approx(statistics.fmean(values))
        assert c["val_accuracy"]["std"] == pytest.approx(statistics.stdev(values))
        assert all(r["spec"]["optimizer"] | {"lr": 0} == {**c["optimizer"], "lr": 0} for r in runs)
        assert all(r["spec"]["optimizer"]["lr"] == c["lr"] and r["spec"]["schedule"] == c["schedule"] for r in runs)
        groups[label] = ReplicateGroup(
            label=label,
            run_ids=c["run_ids"],
            seeds=c["val_accuracy"]["seeds"],
            n=len(runs),
            metric_values=values,
            mean=c["val_accuracy"]["mean"],
            std=c["val_accuracy"]["std"],
        )
    # 4. the winner has the best mean; the runner-up is the other optimizer's best; the verdict is theirs
    winner, runner_up = advice["recommendation"], advice["runner_up"]
    assert winner["val_accuracy"]["mean"] == max(c["val_accuracy"]["mean"] for c in configurations.values())
    assert winner["optimizer"]["name"] != runner_up["optimizer"]["name"]
    others_best = max(
        (c for c in configurations.values() if c["optimizer"]["name"] != winner["optimizer"]["name"]),
        key=lambda c: c["val_accuracy"]["mean"],
    )
    assert runner_up["label"] == others_best["label"]
    expected = analysis.verdict(groups[winner["label"]], groups[runner_up["label"]], "best_val_accuracy")
    verdict = advice["verdict"]
    assert {k: verdict[k] for k in expected.model_dump()} == pytest.approx(expected.model_dump(mode="json"))
    assert verdict["better"] == winner["label"] and verdict["other"] == runner_up["label"]
    if verdict["significant"]:
        assert verdict["statement"].startswith(f"{winner['label']} beats {runner_up['label']}")
    else:
        assert f"{winner['label']} and {runner_up['label']} are indistinguishable here" in verdict["statement"]
    assert verdict["method"] == "paired t" and verdict["n_pairs"] == seeds
    assert winner["spec"]["optimizer"]["lr"] == winner["lr"] and winner["spec"]["epochs"] == epochs
    assert set(advice["compare_url"].split("=", 1)[1].split(",")) == {*winner["run_ids"], *runner_up["run_ids"]}
    compared = get(lab, advice["compare_url"])  # the same two groups, under the advice's names, the same verdict
    assert [g["label"] for g in compared["groups"]] == [winner["label"], runner_up["label"]]
    assert compared["verdict"]["difference"] == pytest.approx(verdict["difference"])
    # compute: every stored epoch of the advice's runs and the range tests' steps, against the full grid
    with lab.session() as s:
        stored = s.scalar(
            select(func.count())
            .select_from(CurvePoint)
            .join(Run, Run.id == CurvePoint.run_id)
            .join(Experiment, Experiment.id == Run.experiment_id)
            .where(Experiment.advice_id == advice["id"])
        )
        steps = sum(
            len(j.result["points"]) for j in s.scalars(select(LrFinder).where(LrFinder.advice_id == advice["id"]))
        )
    swept = steps * request["base"]["batch_size"] / (n_samples - round(n_samples * 0.2))
    assert advice["compute"]["epochs_trained"] == pytest.approx(stored + swept, abs=0.01)
    assert advice["compute"]["full_grid_epochs"] == (len(search["candidates"]) + 1) * seeds * epochs


def test_advise_from_the_command_line_to_a_verdict(lab: Lab, tmp_path: Path) -> None:
    spec = tmp_path / "advice.json"
    spec.write_text(json.dumps(REQUEST))
    done = subprocess.run(
        [sys.executable, "-m", "lrlab.cli", "advise", str(spec), "--wait", "--url", lab.url, "--poll", "0.3"],
        env=lab.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:] + lab.worker_logs()
    advice_id, *lines = done.stdout.splitlines()
    advice = get(lab, f"/v1/advice/{advice_id}")
    check_advice(lab, advice, REQUEST)
    winner, runner_up = advice["recommendation"], advice["runner_up"]
    assert lines[0].startswith(
        f"recommendation: {winner['label']}  best val_accuracy {winner['val_accuracy']['mean']:.4f}"
    )
    assert lines[1].startswith(f"runner-up: {runner_up['label']}")
    assert lines[2] == f"verdict: {advice['verdict']['statement']}"
    assert json.loads(lines[-1].removeprefix("run it: ")) == winner["spec"]
    progress = done.stderr.splitlines()  # a line whenever it moved, the last when it ended
    assert progress[-1].startswith(f"{advice_id[:8]} succeeded replicates 6/6 runs"), progress

    # the client reads the same; listed; the recommendation trains as a run of its own
    lab_client = lab.client()
    assert lab_client.advice(advice_id).model_dump(mode="json") == advice
    assert advice_id in [a.id for a in lab_client.advice_list().data]
    run = lab_client.submit_run(winner["spec"])
    assert run.status == "queued"


def test_advice_for_a_plugin_model(lab: Lab) -> None:
    """Which optimizer and lr for your own model: the example plugin's transformer on its motifs dataset."""
    model = {"name": "tiny-transformer", "params": {"width": 8, "heads": 2, "depth": 1}}
    dataset = {"name": "motifs", "params": {"n_samples": 300, "length": 12}}
    offered = lambda: any(m["name"] == model["name"] for m in get(lab, "/v1/catalog")["models"])  # noqa: E731
    wait_for(offered, 60, "the workers' plugins in the catalog")
    request = {**REQUEST, "name": "plugin", "base": {**BASE, "dataset": dataset, "model": model, "batch_size": 32}}
    advice = wait_finished(lab, lab.client().advise(request).id)
    check_advice(lab, advice, request, n_samples=10_000)
    spec = advice["recommendation"]["spec"]
    assert spec["model"] == model and {k: spec["dataset"][k] for k in dataset} == dataset
    refused = httpx.post(
        f"{lab.url}/v1/advice", json={**request, "base": {**request["base"], "model": {"name": "vit"}}}
    )
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "base", "model", "name"]


def test_idempotent_and_refused_requests_write_nothing(lab: Lab) -> None:
    """The same Idempotency-Key answers the same advice; bad input is a 422 naming the field; nothing trains."""
    body = {**REQUEST, "base": {**BASE, "device": "cuda"}}  # no worker serves the gpu queue: nothing trains
    first = httpx.post(f"{lab.url}/v1/advice", json=body, headers={"Idempotency-Key": "k1"}, timeout=30)
    again = httpx.post(f"{lab.url}/v1/advice", json=body, headers={"Idempotency-Key": "k1"}, timeout=30)
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = httpx.post(f"{lab.url}/v1/advice", json={**body, "seeds": 3}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    created = first.json()
    assert len(created["lr_finders"]) == 2 and created["stage"] == "range_tests"
    for bad, loc in [
        ({"optimizers": ["adam", "adam"]}, ["body", "optimizers", 1]),
        ({"optimizers": ["nesterov"]}, ["body", "optimizers", 0]),
        ({"optimizers": []}, ["body", "optimizers"]),
        ({"seeds": 1}, ["body", "seeds"]),
        ({"seeds": 2.0}, ["body", "seeds"]),
        ({"schedules": [{"kind": "cosine", "warmup_epochs": 3}]}, ["body", "schedules", 0, "warmup_epochs"]),
        ({"base": {**BASE, "epochs": 0}}, ["body", "base", "epochs"]),
        ({"base": {**BASE, "seed": 2**31 - 2}, "seeds": 3}, ["body", "seeds"]),  # the replicates' seeds
        (
            {"base": {**BASE, "optimizer": {"name": "adam", "lr": math.inf}}},
            ["body", "base", "optimizer", "adam", "lr"],
        ),
        ({"name": "x\x00" * 200}, ["body", "name"]),
        ({"surprise": 1}, ["body", "surprise"]),
    ]:
        resp = httpx.post(
            f"{lab.url}/v1/advice",
            content=json.dumps({**REQUEST, **bad}),
            timeout=30,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["detail"][0]["loc"] == loc, (bad, resp.json())
    cancelled = httpx.post(f"{lab.url}/v1/advice/{created['id']}/cancel", timeout=30)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert all(t["status"] == "cancelled" for t in cancelled.json()["range_tests"])
    assert httpx.post(f"{lab.url}/v1/advice/{created['id']}/cancel", timeout=30).status_code == 409
    assert httpx.get(f"{lab.url}/v1/advice/nope", timeout=30).status_code == 404


def test_cancel_stops_every_stage(lab: Lab) -> None:
    request = {**REQUEST, "base": {**BASE, "epochs": 400}}  # long enough to be caught in its search
    created = lab.client().advise(request)

    def searching() -> bool:
        advice = lab.client().advice(created.id)
        return advice.search is not None and any(c.status == "running" for c in advice.search.candidates)

    wait_for(searching, 120, "the search under way", interval=0.3)
    stopped = lab.client().cancel_advice(created.id)
    assert stopped.status == "cancelled" and stopped.stage == "search"

    def all_ended() -> Any:
        advice = lab.client().advice(created.id)
        return advice if all(c.status not in ("queued", "running") for c in advice.search.candidates) else None

    advice = wait_for(all_ended, 60, "every search run to stop")
    statuses = {c.status for c in advice.search.candidates}
    # before the cancel a candidate may already have ended on its own: stopped by ASHA, or diverged (the search
    # draws learning rates up to where a run blows up in its first epochs); none completed 400 epochs
    assert statuses <= {"cancelled", "stopped", "diverged"} and "cancelled" in statuses, statuses
    assert all(c.epochs < 400 for c in advice.search.candidates)
    time.sleep(1.5)  # a few reconciler passes (every 0.5 s): none may start the next stage
    after = lab.client().advice(created.id)
    assert after.status == "cancelled" and after.replicates is None and after.recommendation is None
    with lab.session() as s:  # no stage was started after the cancel
        assert s.scalar(select(func.count()).select_from(Experiment).where(Experiment.advice_id == created.id)) == 1


def test_worker_killed_mid_stage_still_finishes_nothing_twice(lab: Lab) -> None:
    request = {**REQUEST, "name": "killed", "base": {**BASE, "epochs": 6, "batch_size": 16}}
    created = lab.client().advise(request)

    def training_on_both() -> Any:
        with lab.session() as s:
            rows = s.execute(
                select(Run.worker, func.count())
                .join(Experiment, Experiment.id == Run.experiment_id)
                .where(Experiment.advice_id == created.id, Run.status == "running")
                .group_by(Run.worker)
            ).all()
        return rows if len(rows) == 2 else None

    busy = wait_for(training_on_both, 120, "search runs training on both workers", interval=0.1)
    victim = next(p for p in lab.workers if p.poll() is None)
    os.killpg(victim.pid, signal.SIGKILL)  # mid-run, mid-stage: its runs' leases lapse
    victim.wait()
    advice = wait_finished(lab, created.id)
    assert advice["status"] == "succeeded", advice
    assert busy
    check_advice(lab, advice, request)
    with lab.session() as s:
        experiments = s.scalars(select(Experiment).where(Experiment.advice_id == created.id)).all()
        assert len(experiments) == 3  # search, replicates, schedules: each made once
        jobs = s.scalar(select(func.count()).select_from(LrFinder).where(LrFinder.advice_id == created.id))
        assert jobs == 2
        runs = s.scalars(select(Run).where(Run.experiment_id.in_([e.id for e in experiments]))).all()
        resumed = [r for r in runs if r.attempts > 1]
        assert resumed, "the killed worker's runs were taken over"
        for run in runs:
            epochs = list(
                s.scalars(select(CurvePoint.epoch).where(CurvePoint.run_id == run.id).order_by(CurvePoint.epoch))
            )
            assert epochs == list(range(1, len(epochs) + 1)), (run.id, epochs)  # every epoch once
            assert run.status in ("succeeded", "stopped", "diverged") and len(epochs) == run.summary["epochs_completed"]
    add_worker(lab)  # back to two for what comes after
