"""Comparisons of runs: summaries against a target, ranking, replicate groups over seeds, a verdict, charts."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab.models import CurvePoint, Run
from lrlab.reports import analysis, charts
from lrlab.runs.store import point_public
from lrlab.schemas.compare import CompareRun, Comparison
from lrlab.schemas.spec import RunSpec


def points_by_run(session: Session, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every stored point of these runs in one query, in epoch order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows = session.scalars(
        select(CurvePoint).where(CurvePoint.run_id.in_(run_ids)).order_by(CurvePoint.run_id, CurvePoint.epoch)
    )
    for row in rows:
        out[row.run_id].append(point_public(row))
    return out


def spec_label(spec: RunSpec, *, with_seed: bool = True) -> str:
    """A readable label for a run that came from no grid: optimizer, lr, schedule, seed."""
    parts = [f"{spec.optimizer.name} lr={spec.optimizer.lr:g}"]
    if spec.schedule.kind != "constant":
        parts.append(spec.schedule.kind)
    if with_seed:
        parts.append(f"seed={spec.seed}")
    return " ".join(parts)


def _entry(run: Run, pts: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    spec = RunSpec.model_validate(run.spec)
    stored = run.summary or {}
    summary = analysis.summarize(
        pts,
        target=target,
        diverged_at=stored.get("diverged_at"),
        reason=stored.get("reason"),
        early_stopped=bool(stored.get("early_stopped")),
    )
    params = run.params or {}
    return {
        "run_id": run.id,
        "label": run.label or spec_label(spec),
        "config": params.get("config") or spec_label(spec, with_seed=False),
        "seed": spec.seed,
        "status": run.status,
        "spec": spec,
        "summary": summary,
        "points": pts,
    }


def compare(
    session: Session, runs: list[Run], *, metric: str, target: float | None = None, max_points: int | None = None
) -> Comparison:
    by_run = points_by_run(session, [r.id for r in runs])
    entries = analysis.rank([_entry(r, by_run.get(r.id, []), target) for r in runs], metric)
    configs: dict[str, set[int]] = defaultdict(set)
    for e in entries:
        configs[e["config"]].add(e["seed"])
    groups = analysis.group_replicates(entries, metric) if any(len(s) > 1 for s in configs.values()) else []
    verdict = analysis.verdict(groups[0], groups[1], metric) if len(groups) >= 2 else None
    out = []
    for e in entries:
        pts, info = analysis.downsample(e["points"], max_points) if max_points else (e["points"], None)
        sampling = info.model_dump() if info else {"n_raw": len(pts), "n_returned": len(pts)}
        out.append(
            CompareRun(
                run_id=e["run_id"],
                label=e["label"],
                status=e["status"],
                spec=e["spec"],
                summary=e["summary"],
                points=pts,
                **sampling,
            )
        )
    return Comparison(
        metric=metric,  # type: ignore[arg-type]
        mode=analysis.metric_mode(metric),
        target=target,
        runs=out,
        groups=groups,
        verdict=verdict,
    )


def chart(
    session: Session, runs: list[Run], metric: str, *, fmt: str, log_scale: bool = False, title: str | None = None
) -> bytes:
    """One line per run, legend from labels; diverged runs marked and kept from wrecking the scale."""
    by_run = points_by_run(session, [r.id for r in runs])
    series = []
    for run in runs:
        spec = RunSpec.model_validate(run.spec)
        diverged_at = (run.summary or {}).get("diverged_at")
        group = (run.params or {}).get("config") or spec_label(spec, with_seed=False)
        series.append(
            charts.Series(run.label or spec_label(spec), run.status, by_run.get(run.id, []), diverged_at, group)
        )
    return charts.render_runs_chart(series, metric, fmt=fmt, log_scale=log_scale, title=title)  # type: ignore[arg-type]
