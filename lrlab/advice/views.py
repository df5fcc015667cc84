"""What GET /v1/advice/{id} reads back: each stage's objects and how they did, the answer, the compute spent."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lrlab.advice import pipeline, plan
from lrlab.models import Advice, CurvePoint, Experiment, LrFinder, Run
from lrlab.runs import quotas
from lrlab.schemas.advice import (
    Accuracy,
    AdvicePublic,
    AdviceStatus,
    AdviceVerdict,
    Candidate,
    Compute,
    Configuration,
    RangeTest,
    ReplicatesStage,
    SearchStage,
)
from lrlab.schemas.search import EarlyStopping
from lrlab.schemas.spec import RunSpec


def to_public(session: Session, advice: Advice) -> AdvicePublic:
    request = pipeline.request_of(advice)
    jobs = {j.id: j for j in session.scalars(select(LrFinder).where(LrFinder.advice_id == advice.id))}
    tests = [_range_test(t, jobs.get(t["job_id"])) for t in advice.plan.get("range_tests", [])]
    search = _search(session, advice, request.base.epochs)
    configurations = _configurations(session, advice, request) if advice.plan.get("replicates") else []
    by_label = {c.label: c for c in configurations}
    result = advice.result or {}
    winner, runner_up = by_label.get(result.get("recommendation") or ""), by_label.get(result.get("runner_up") or "")
    status = AdviceStatus(advice.status)
    if status == AdviceStatus.queued and any(t.status != "queued" for t in tests):
        status = AdviceStatus.running  # a range test started: the advice is under way
    shown = [*(winner.run_ids if winner else []), *(runner_up.run_ids if runner_up else [])]
    return AdvicePublic(
        id=advice.id,
        name=advice.name,
        status=status,
        stage=advice.stage,  # type: ignore[arg-type]
        created_at=advice.created_at,
        finished_at=advice.finished_at,
        error=advice.error,
        request=request,
        range_tests=tests,
        search=search,
        replicates=_replicates(advice, configurations),
        recommendation=winner,
        runner_up=runner_up,
        verdict=AdviceVerdict.model_validate(result["verdict"]) if result.get("verdict") else None,
        compare_url=f"/v1/compare?runs={','.join(shown)}" if shown else None,
        compute=_compute(session, advice, request, jobs.values(), search),
    )


def _range_test(test: dict[str, Any], job: LrFinder | None) -> RangeTest:
    result = (job.result if job is not None else None) or {}
    return RangeTest(
        optimizer=test["optimizer"],
        job_id=test["job_id"],
        status=job.status if job is not None else "unknown",
        suggested_lr=result.get("suggested_lr"),
        center_lr=test.get("center_lr"),
        source=test.get("source"),
        lrs=test.get("lrs", []),
    )


def _search(session: Session, advice: Advice, budget: int) -> SearchStage | None:
    search = advice.plan.get("search")
    if not search:
        return None
    runs = pipeline.tried(session, search["experiment_id"])
    if advice.stage != "search":  # ended: best first, as the finalists were chosen
        runs = plan.rank(runs, budget)
    labels = {r.run_id: plan.tried_label(r) for r in runs}
    return SearchStage(
        experiment_id=search["experiment_id"],
        early_stopping=EarlyStopping.model_validate(search["early_stopping"]) if search.get("early_stopping") else None,
        candidates=[
            Candidate(
                run_id=r.run_id, optimizer=r.label, lr=r.lr, status=r.status, epochs=r.epochs, best_val_accuracy=r.best
            )
            for r in runs
        ],
        finalists=[labels[i] for i in search.get("finalists", []) if i in labels],
    )


def _configurations(session: Session, advice: Advice, request: Any) -> list[Configuration]:
    out = []
    for contender, spec in pipeline.contenders(session, advice, request):
        group = contender.group
        full = spec.model_copy(update={"seed": request.base.seed})
        out.append(
            Configuration(
                label=group.label,
                optimizer=spec.optimizer.model_dump(mode="json", exclude={"lr"}),
                lr=spec.optimizer.lr,
                schedule=spec.schedule.model_dump(mode="json"),
                val_accuracy=Accuracy(
                    mean=group.mean,
                    std=group.std,
                    n=sum(v is not None for v in group.metric_values),
                    values=group.metric_values,
                    seeds=group.seeds,
                ),
                run_ids=group.run_ids,
                spec=RunSpec.model_validate(full.to_json()),
            )
        )
    return out


def _replicates(advice: Advice, configurations: list[Configuration]) -> ReplicatesStage | None:
    replicates = advice.plan.get("replicates")
    if not replicates:
        return None
    return ReplicatesStage(
        experiment_id=replicates["experiment_id"],
        schedules_experiment_id=replicates.get("schedules_experiment_id"),
        configurations=configurations,
    )


def _compute(session: Session, advice: Advice, request: Any, jobs: Any, search: SearchStage | None) -> Compute:
    """Epochs stored by the advice's runs and its range tests' steps as epochs; what a full grid would cost."""
    stored = session.scalar(
        select(func.count())
        .select_from(CurvePoint)
        .join(Run, Run.id == CurvePoint.run_id)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Experiment.advice_id == advice.id)
    )
    base = request.base
    samples = quotas.samples(base.dataset, quotas.uploaded_samples(session, advice.owner, [base]))
    swept = sum(len((j.result or {}).get("points") or []) for j in jobs)
    trained = (stored or 0) + plan.range_test_epochs(swept, base.batch_size, samples)
    candidates = len(search.candidates) if search else len(request.optimizers) * len(plan.LR_FACTORS)
    full = plan.full_grid_epochs(candidates, len(request.schedules) - 1, request.seeds, base.epochs)
    return Compute(epochs_trained=round(trained, 2), full_grid_epochs=full, fraction=round(trained / full, 4))
