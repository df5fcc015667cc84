"""The advice's state machine on real Postgres, its objects' outcomes written here as a worker would record them:
a stage moves on exactly once (however many callers race for it), the reconciler moves on an advice nobody moved,
the finalists and the verdict follow from the outcomes, a cancel stops every stage."""

from __future__ import annotations

import statistics
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, select, update

from lrlab import broker
from lrlab.advice import pipeline, views
from lrlab.db import session_scope
from lrlab.models import Advice, Experiment, LrFinder, Run
from lrlab.reports import analysis
from lrlab.runs import experiments
from lrlab.schemas.advice import AdviceCreate
from lrlab.schemas.spec import RunSpec

pytestmark = pytest.mark.service

OWNER = "advice-tests"
# device cuda: the work is queued on the gpu queue, which no worker of the test session serves
REQUEST = AdviceCreate.model_validate(
    {
        "name": "machine",
        "base": {"dataset": "digits", "epochs": 9, "device": "cuda"},
        "optimizers": ["adam", "sgd", "rmsprop", "adagrad"],
        "seeds": 3,
    }
)


@pytest.fixture
def app(service_env: dict[str, str]) -> Iterator[Celery]:
    yield broker.make_celery()


def create(request: AdviceCreate = REQUEST) -> str:
    with session_scope() as s:
        advice, _, _ = pipeline.create(s, request, owner=OWNER)
        return advice.id


def jobs(advice_id: str) -> list[str]:
    with session_scope() as s:
        return list(s.scalars(select(LrFinder.id).where(LrFinder.advice_id == advice_id).order_by(LrFinder.created_at)))


def end_job(job_id: str, status: str = "succeeded", suggested: float | None = 3e-3) -> None:
    result = {"suggested_lr": suggested, "rule": "a tenth of the minimum", "points": [{}] * 80}
    with session_scope() as s:
        s.execute(
            update(LrFinder)
            .where(LrFinder.id == job_id)
            .values(
                status=status,
                result=result if status == "succeeded" else None,
                error="boom" if status == "failed" else None,
            )
        )


def end_run(run_id: str, status: str, best: float | None, epochs: int) -> None:
    summary = {"epochs_completed": epochs, "best_val_accuracy": best}
    with session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(status=status, summary=summary))


def advice_row(advice_id: str) -> Advice:
    with session_scope() as s:
        found = s.get(Advice, advice_id)
        assert found is not None
        return found


def n_experiments(advice_id: str) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Experiment).where(Experiment.advice_id == advice_id)) or 0)


def runs_of(experiment_id: str) -> list[tuple[str, RunSpec]]:
    with session_scope() as s:
        return [(r.id, RunSpec.model_validate(r.spec)) for r in experiments.members(s, experiment_id)]


def race(advice_id: str, callers: int = 4) -> list[tuple[bool, list[Any]]]:
    """`callers` threads call advance at once; what each got."""
    start, out = threading.Barrier(callers), []

    def call() -> None:
        start.wait()
        out.append(pipeline.advance(advice_id))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_each_stage_moves_on_once_and_the_verdict_follows_from_the_outcomes(app: Celery) -> None:
    advice_id = create()
    ids = jobs(advice_id)
    assert len(ids) == 4 and pipeline.advance(advice_id) == (False, [])
    for job_id in ids[:3]:
        end_job(job_id)
        assert pipeline.advance(advice_id) == (False, [])  # not the last: nothing moves
    end_job(ids[3], status="failed")

    # range tests -> search: four callers race for it, one wins
    results = race(advice_id)
    assert sorted(moved for moved, _ in results) == [False, False, False, True]
    messages = next(m for moved, m in results if moved)
    row = advice_row(advice_id)
    assert row.stage == "search" and row.status == "running" and n_experiments(advice_id) == 1
    tests = {t["optimizer"]: t for t in row.plan["range_tests"]}
    assert tests["adam"]["center_lr"] == 3e-3 and tests["adam"]["lrs"] == [0.0003, 0.001, 0.003, 0.009, 0.03]
    failed = tests["adagrad"]
    assert failed["center_lr"] == 1e-2 and "failed: boom" in failed["source"]  # adagrad's own default
    search = runs_of(row.plan["search"]["experiment_id"])
    assert len(search) == 20 and sum(len(m.ids) for m in messages) == 20
    assert pipeline.advance(advice_id) == (False, [])

    # the search's outcomes, written as workers record them; nobody calls advance: the reconciler does
    score = {"adam": 0.95, "sgd": 0.96, "rmsprop": 0.94, "adagrad": 0.90}
    for run_id, spec in search:
        name = spec.optimizer.name
        if name == "sgd" and spec.optimizer.lr == max(s.optimizer.lr for _, s in search if s.optimizer.name == "sgd"):
            end_run(run_id, "diverged", 0.99, 2)  # the best score of all, but it diverged
        else:
            end_run(run_id, "succeeded", score[name] + spec.optimizer.lr / 1000, 9)
    assert advice_id in pipeline.reconcile(app=app)
    assert advice_id not in pipeline.reconcile(app=app)  # once
    row = advice_row(advice_id)
    assert row.stage == "replicates" and n_experiments(advice_id) == 3
    finalists = {rid: spec for rid, spec in search if rid in row.plan["search"]["finalists"]}
    assert sorted((s.optimizer.name, s.optimizer.lr) for s in finalists.values()) == [
        ("adam", 0.03),
        ("rmsprop", 0.03),
        ("sgd", 0.009),  # sgd's best that did not diverge
    ]
    replicates = runs_of(row.plan["replicates"]["experiment_id"])
    schedules = runs_of(row.plan["replicates"]["schedules_experiment_id"])
    assert len(replicates) == 9 and len(schedules) == 3
    assert {(s.optimizer.name, s.schedule.kind) for _, s in schedules} == {("sgd", "cosine")}
    assert sorted(s.seed for _, s in schedules) == [0, 1, 2]

    # the replicates' outcomes: sgd ahead of rmsprop by a hair, cosine no better, one rmsprop replicate failed
    values = {"sgd": [0.970, 0.960, 0.975], "rmsprop": [0.968, 0.962, None], "adam": [0.95, 0.94, 0.95]}
    for run_id, spec in replicates:
        value = values[spec.optimizer.name][spec.seed]
        end_run(run_id, "failed" if value is None else "succeeded", value, 9)
    for run_id, spec in schedules:
        end_run(run_id, "succeeded", [0.965, 0.955, 0.97][spec.seed], 9)
    moved, _ = pipeline.advance(advice_id)
    assert moved and pipeline.advance(advice_id) == (False, [])
    with session_scope() as s:
        row = s.get(Advice, advice_id)
        assert row is not None
        public = views.to_public(s, row)
    assert public.status == "succeeded" and public.stage == "verdict"
    winner, runner_up = public.recommendation, public.runner_up
    assert winner is not None and runner_up is not None
    assert (winner.label, runner_up.label) == ("sgd(momentum=0.9) 9e-3", "rmsprop 3e-2")
    assert winner.val_accuracy.mean == pytest.approx(statistics.fmean(values["sgd"]))
    assert runner_up.val_accuracy.values == [0.968, 0.962, None] and runner_up.val_accuracy.n == 2
    assert winner.spec.optimizer.model_dump() == {**winner.optimizer, "lr": 0.009}
    assert public.verdict is not None and not public.verdict.significant and public.verdict.n_pairs == 2
    assert public.verdict.statement.startswith("sgd(momentum=0.9) 9e-3 and rmsprop 3e-2 are indistinguishable here")
    expected = analysis.verdict(
        analysis.group_replicates(
            [
                {
                    "run_id": str(k),
                    "config": c,
                    "seed": k % 3,
                    "status": "succeeded",
                    "summary": {"best_val_accuracy": v},
                }
                for c, vs in (("w", values["sgd"]), ("r", values["rmsprop"]))
                for k, v in enumerate(vs)
                if v is not None
            ],
            "best_val_accuracy",
        )[0],
        analysis.group_replicates(
            [
                {"run_id": "r", "config": "r", "seed": k, "status": "succeeded", "summary": {"best_val_accuracy": v}}
                for k, v in enumerate(values["rmsprop"][:2])
            ],
            "best_val_accuracy",
        )[0],
        "best_val_accuracy",
    )
    assert public.verdict.difference == pytest.approx(expected.difference)
    assert (public.verdict.ci_low, public.verdict.ci_high) == pytest.approx((expected.ci_low, expected.ci_high))
    labels = [c.label for c in public.replicates.configurations]
    assert labels == [winner.label, runner_up.label, "sgd(momentum=0.9) 9e-3 cosine", "adam 3e-2"]
    assert public.compute.full_grid_epochs == (20 + 1) * 3 * 9


def test_cancel_stops_queued_work_and_nothing_moves_after(app: Celery) -> None:
    advice_id = create()
    for job_id in jobs(advice_id):
        end_job(job_id)
    assert pipeline.advance(advice_id)[0]
    search = runs_of(advice_row(advice_id).plan["search"]["experiment_id"])
    with session_scope() as s:  # one of them training: asked to stop, not stopped under its worker
        s.execute(update(Run).where(Run.id == search[0][0]).values(status="running", lease_token="t"))
    with session_scope() as s:
        row = s.get(Advice, advice_id)
        assert row is not None and pipeline.cancel(s, row)
    with session_scope() as s:
        statuses = {
            r.id: (r.status, r.cancel_requested)
            for r in experiments.members(s, advice_row(advice_id).plan["search"]["experiment_id"])
        }
    assert statuses[search[0][0]] == ("running", True)
    assert {v for k, v in statuses.items() if k != search[0][0]} == {("cancelled", True)}
    end_run(search[0][0], "cancelled", 0.5, 3)  # its worker stops it after the epoch
    assert pipeline.advance(advice_id) == (False, []) and advice_id not in pipeline.reconcile(app=app)
    row = advice_row(advice_id)
    assert row.status == "cancelled" and row.stage == "search" and n_experiments(advice_id) == 1
    with session_scope() as s:
        again = s.get(Advice, advice_id)
        assert again is not None and not pipeline.cancel(s, again)  # already finished


def test_a_search_with_nothing_usable_fails_saying_why(app: Celery) -> None:
    advice_id = create(AdviceCreate.model_validate({**REQUEST.to_json(), "optimizers": ["adam", "sgd"], "seeds": 2}))
    for job_id in jobs(advice_id):
        end_job(job_id, suggested=None)
    assert pipeline.advance(advice_id)[0]
    row = advice_row(advice_id)
    assert all("default lr" in t["source"] for t in row.plan["range_tests"])
    for run_id, _ in runs_of(row.plan["search"]["experiment_id"]):
        with session_scope() as s:
            s.execute(update(Run).where(Run.id == run_id).values(status="failed", error="RuntimeError: out of memory"))
    assert advice_id in pipeline.reconcile(app=app)
    row = advice_row(advice_id)
    assert row.status == "failed" and row.finished_at is not None
    assert (
        row.error
        == "no run of the search finished without failing or diverging (first error: RuntimeError: out of memory)"
    )
    assert n_experiments(advice_id) == 1


def test_an_advice_that_cannot_move_on_holds_up_no_other(app: Celery) -> None:
    broken, fine = create(), create()
    for job_id in jobs(broken) + jobs(fine):
        end_job(job_id)
    with session_scope() as s:  # a plan this code cannot read (a bug, or a row from a future version)
        s.execute(update(Advice).where(Advice.id == broken).values(plan={"range_tests": [{}] * 4}))
    moved = pipeline.reconcile(app=app)
    assert fine in moved and broken not in moved
    assert advice_row(fine).stage == "search" and advice_row(broken).stage == "range_tests"
    with session_scope() as s:  # left as it was, for the next pass (and a person) to see
        s.execute(update(Advice).where(Advice.id == broken).values(status="cancelled"))
