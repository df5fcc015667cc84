"""Comparisons of runs: summaries against a target, ranking, replicate groups over seeds, a verdict, charts.

Curves are read as columns in one query (lrlab.reports.curves), summarised and grouped with numpy
(lrlab.reports.columnar, exact to the last bit against lrlab.reports.analysis), and a comparison is written as
JSON bytes a run at a time (lrlab.reports.encode): 256 runs x 1000 epochs take well under a second and no
object per point (docs/benchmarks.md). Everything is computed from the stored rows on each read, so rows written
by any writer (plain SQL included) are summarised the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from lrlab.models import Run
from lrlab.reports import analysis, charts, columnar, encode
from lrlab.reports.curves import FIELDS, Curve, empty_curve, fetch
from lrlab.schemas.compare import CompareRun, Comparison, ReplicateGroup
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.spec import RunSpec


def spec_label(spec: RunSpec, *, with_seed: bool = True) -> str:
    """A readable label for a run that came from no grid: optimizer, lr, schedule, seed."""
    parts = [f"{spec.optimizer.name} lr={spec.optimizer.lr:g}"]
    if spec.schedule.kind != "constant":
        parts.append(spec.schedule.kind)
    if with_seed:
        parts.append(f"seed={spec.seed}")
    return " ".join(parts)


@dataclass
class _Entry:
    run: Run
    spec: RunSpec
    curve: Curve

    @property
    def label(self) -> str:
        return self.run.label or spec_label(self.spec)

    @property
    def config(self) -> str:
        return (self.run.params or {}).get("config") or spec_label(self.spec, with_seed=False)


def _entries(session: Session, runs: list[Run], fields: Sequence[str] = FIELDS) -> list[_Entry]:
    curves = fetch(session, [r.id for r in runs], fields)
    return [_Entry(r, RunSpec.model_validate(r.spec), curves.get(r.id) or empty_curve(fields)) for r in runs]


def _ranked(entries: list[_Entry], metric: str, target: float | None) -> list[dict[str, Any]]:
    """analysis.rank over the entries, each with its summary computed from its curve (the stored summary gives
    only what the curve cannot: where and why it diverged, whether it stopped early)."""
    rows = []
    for e in entries:
        stored = e.run.summary or {}
        summary = columnar.summarize(
            e.curve,
            target=target,
            diverged_at=stored.get("diverged_at"),
            reason=stored.get("reason"),
            early_stopped=bool(stored.get("early_stopped")),
        )
        rows.append(
            {
                "run_id": e.run.id,
                "config": e.config,
                "seed": e.spec.seed,
                "status": e.run.status,
                "summary": summary,
                "entry": e,
            }
        )
    return analysis.rank(rows, metric)


def _groups(ranked: list[dict[str, Any]], metric: str) -> tuple[list[ReplicateGroup], list[bytes]]:
    """analysis.group_replicates (its per-epoch statistics left out), and those statistics as JSON, per group."""
    configs: dict[str, set[int]] = defaultdict(set)
    for r in ranked:
        configs[r["config"]].add(r["seed"])
    if not any(len(seeds) > 1 for seeds in configs.values()):
        return [], []
    groups = analysis.group_replicates(ranked, metric)  # no "points" in the rows: epochs come out empty
    by_id = {r["run_id"]: r for r in ranked}
    curves = [
        [by_id[run_id]["entry"].curve for run_id in g.run_ids if str(by_id[run_id]["status"]) not in analysis.NO_CURVE]
        for g in groups
    ]
    return groups, [encode.epoch_stats(stats) for stats in columnar.epoch_stats(curves)]


def compare(
    session: Session, runs: list[Run], *, metric: str, target: float | None = None, max_points: int | None = None
) -> Iterator[bytes]:
    """A Comparison (lrlab.schemas.compare) as JSON, in chunks: computed now, each run's points written as the
    chunks are taken (the database is not needed any more by then)."""
    ranked = _ranked(_entries(session, runs), metric, target)
    groups, epochs = _groups(ranked, metric)
    verdict = analysis.verdict(groups[0], groups[1], metric) if len(groups) >= 2 else None
    head = Comparison(
        metric=metric,  # type: ignore[arg-type]
        mode=analysis.metric_mode(metric),
        target=target,
        runs=[],
        groups=[],
        verdict=verdict,
    ).model_dump(mode="json")
    del head["runs"], head["groups"]

    def chunks() -> Iterator[bytes]:
        yield encode.dumps(head)[:-1] + b',"runs":['
        for i, r in enumerate(ranked):
            yield (b"," if i else b"") + _run_json(r, max_points)
        yield b'],"groups":['
        for i, (g, stats) in enumerate(zip(groups, epochs, strict=True)):
            meta = g.model_dump(mode="json")
            del meta["epochs"]
            yield (b"," if i else b"") + encode.with_array(meta, "epochs", stats)
        yield b"]}"

    return chunks()


def _run_json(row: dict[str, Any], max_points: int | None) -> bytes:
    e: _Entry = row["entry"]
    rows, info = columnar.downsample_rows(e.curve, max_points) if max_points else (None, None)
    n = len(e.curve)
    sampling = info.model_dump() if info else {"n_raw": n, "n_returned": n}
    meta = CompareRun(
        run_id=e.run.id,
        label=e.label,
        status=RunStatus(e.run.status),
        spec=e.spec,
        summary=row["summary"],
        points=[],
        **sampling,
    ).model_dump(mode="json")
    del meta["points"]
    return encode.with_array(meta, "points", encode.points(e.curve, rows))


def chart(
    session: Session, runs: list[Run], metric: str, *, fmt: str, log_scale: bool = False, title: str | None = None
) -> bytes:
    """One line per run, legend from labels; diverged runs marked and kept from wrecking the scale."""
    series = chart_series(session, runs, metric)
    return charts.render_runs_chart(series, metric, fmt=fmt, log_scale=log_scale, title=title)  # type: ignore[arg-type]


def chart_series(session: Session, runs: list[Run], metric: str) -> list[charts.Series]:
    """What `chart` draws: each run's curve as columns, with its label, status, divergence and configuration."""
    return [
        charts.Series(
            e.label,
            e.run.status,
            (),
            (e.run.summary or {}).get("diverged_at"),
            e.config,
            columns={"epoch": e.curve.epoch, **e.curve.columns},
        )
        for e in _entries(session, runs, fields=[metric] if metric in FIELDS else FIELDS)
    ]
