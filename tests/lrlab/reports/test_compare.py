"""The comparison and its charts, read as columns (lrlab.reports.compare), against the path they replaced: every
point through the ORM into dicts, then lrlab.reports.analysis (kept below as `reference_compare`). Rows are
written with plain SQL, as any writer may write them. Real Postgres."""

from __future__ import annotations

import json
import math
import random
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Json
from sqlalchemy import select

from lrlab.db import get_settings, session_scope
from lrlab.models import CurvePoint, Run, utcnow
from lrlab.reports import analysis, charts, compare
from lrlab.runs.experiments import members
from lrlab.runs.store import point_public
from lrlab.schemas.compare import CompareRun, Comparison
from lrlab.schemas.spec import RunSpec

pytestmark = pytest.mark.service


# --- the path this replaced, as it was ------------------------------------------------------------------------


def reference_points(session: Any, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rows = session.scalars(
        select(CurvePoint).where(CurvePoint.run_id.in_(run_ids)).order_by(CurvePoint.run_id, CurvePoint.epoch)
    )
    for r in rows:
        out[r.run_id].append(point_public(r))
    return out


def reference_compare(
    session: Any, runs: list[Run], *, metric: str, target: float | None = None, max_points: int | None = None
) -> dict[str, Any]:
    by_run = reference_points(session, [r.id for r in runs])
    entries = []
    for run in runs:
        spec = RunSpec.model_validate(run.spec)
        stored = run.summary or {}
        pts = by_run.get(run.id, [])
        entries.append(
            {
                "run_id": run.id,
                "label": run.label or compare.spec_label(spec),
                "config": (run.params or {}).get("config") or compare.spec_label(spec, with_seed=False),
                "seed": spec.seed,
                "status": run.status,
                "spec": spec,
                "summary": analysis.summarize(
                    pts,
                    target=target,
                    diverged_at=stored.get("diverged_at"),
                    reason=stored.get("reason"),
                    early_stopped=bool(stored.get("early_stopped")),
                ),
                "points": pts,
            }
        )
    entries = analysis.rank(entries, metric)
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
            CompareRun(**{k: e[k] for k in ("run_id", "label", "status", "spec", "summary")}, points=pts, **sampling)
        )
    return Comparison(
        metric=metric,  # type: ignore[arg-type]
        mode=analysis.metric_mode(metric),
        target=target,
        runs=out,
        groups=groups,
        verdict=verdict,
    ).model_dump(mode="json")


# --- rows written with plain SQL ------------------------------------------------------------------------------


def dsn() -> str:
    return get_settings().database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def write_experiment(
    seed: int, configs: int, seeds: int, epochs: int, *, values: Any = None, shuffle: bool = False
) -> str:
    """An experiment of configs x seeds runs with noisy curves (gaps, missing values, quantized accuracies, a
    diverged run, a failed one, an empty one), every row inserted with plain SQL."""
    rng = random.Random(seed)
    exp_id, now = str(uuid.uuid4()), utcnow()
    statuses = ["succeeded", "diverged", "failed", "cancelled", "succeeded", "succeeded"]
    with psycopg.connect(dsn()) as conn:
        conn.execute(
            "INSERT INTO experiment (id, owner, name, execution, base, grid, created_at)"
            " VALUES (%s, 'local', 'plain', 'separate', %s, %s, %s)",
            (exp_id, Json({"dataset": {"name": "digits"}}), Json({"lr": [0.1]}), now),
        )
        for c in range(configs):
            for s in range(seeds):
                i = c * seeds + s
                run_id = str(uuid.uuid4())
                status = statuses[i % len(statuses)] if i else "succeeded"
                spec = RunSpec.model_validate(
                    {"dataset": "digits", "optimizer": {"name": "sgd", "lr": 0.1 * (c + 1)}, "seed": s}
                )
                summary = (
                    {"diverged_at": 4, "reason": "loss exploded"}
                    if status == "diverged"
                    else {"early_stopped": i % 5 == 0}
                )
                conn.execute(
                    "INSERT INTO run (id, owner, status, spec, dataset, optimizer, queue, label, created_at, summary,"
                    " cancel_requested, attempts, experiment_id, params) VALUES (%s, 'local', %s, %s, 'digits', 'sgd',"
                    " 'cpu', %s, %s, %s, false, 1, %s, %s)",
                    (
                        run_id,
                        status,
                        Json(spec.to_json()),
                        f"lr={0.1 * (c + 1):g} seed={s}",
                        now + timedelta(milliseconds=i),
                        Json(summary),
                        exp_id,
                        Json({"lr": 0.1 * (c + 1), "seed": s, "config": f"lr={0.1 * (c + 1):g}"}),
                    ),
                )
                n = 0 if i == 3 else rng.randint(epochs // 2, epochs)
                epoch, rows = 0, []
                for _ in range(n):
                    epoch += rng.choice((1, 1, 1, 3))
                    rows.append((run_id, epoch, *(values(rng, epoch) if values else noisy(rng, epoch))))
                if shuffle:  # stored in no particular order (a resumed run rewrites its later epochs, ...)
                    rng.shuffle(rows)
                for values_row in rows:
                    conn.execute(
                        "INSERT INTO curve_point (run_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy,"
                        " lr, seconds, nonfinite) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        values_row,
                    )
    return exp_id


def noisy(rng: random.Random, epoch: int) -> tuple[Any, ...]:
    acc = round(rng.random(), 2)  # ties across runs and epochs
    loss = None if rng.random() < 0.05 else 2.0 / epoch + rng.random()
    flags = '["val_loss"]' if loss is None and rng.random() < 0.5 else "[]"
    return (rng.random() * 3, rng.random(), loss, acc if rng.random() > 0.03 else None, 0.1, rng.random() / 10, flags)


def runs_of(session: Any, exp_id: str) -> list[Run]:
    return members(session, exp_id)


# --- the comparison -------------------------------------------------------------------------------------------

QUERIES = [
    {"metric": "best_val_accuracy"},
    {"metric": "final_val_accuracy", "max_points": 9},
    {"metric": "min_val_loss", "target": 0.5, "max_points": 2},
    {"metric": "final_val_loss", "max_points": 1000},
    {"metric": "epochs_to_target", "target": 0.9},
    {"metric": "seconds", "target": 0.0, "max_points": 30},
]


@pytest.mark.parametrize("query", QUERIES, ids=[json.dumps(q) for q in QUERIES])
def test_comparison_equals_the_reference_path(service_env: dict[str, str], query: dict[str, Any]) -> None:
    exp_id = write_experiment(1, configs=4, seeds=3, epochs=60)
    with session_scope() as s:
        runs = runs_of(s, exp_id)
        got = json.loads(b"".join(compare.compare(s, runs, **query)))
        want = reference_compare(s, runs, **query)
    assert got == want
    assert got["groups"] and got["verdict"] and any(g["epochs"] for g in got["groups"])


def test_comparison_of_rows_stored_out_of_order(service_env: dict[str, str]) -> None:
    exp_id = write_experiment(6, configs=2, seeds=3, epochs=40, shuffle=True)
    with session_scope() as s:
        runs = runs_of(s, exp_id)
        for query in QUERIES[:3]:
            assert json.loads(b"".join(compare.compare(s, runs, **query))) == reference_compare(s, runs, **query)


def test_comparison_without_replicates_has_no_groups(service_env: dict[str, str]) -> None:
    exp_id = write_experiment(2, configs=5, seeds=1, epochs=20)
    with session_scope() as s:
        runs = runs_of(s, exp_id)
        got = json.loads(b"".join(compare.compare(s, runs, metric="best_val_accuracy")))
        assert got == reference_compare(s, runs, metric="best_val_accuracy")
    assert got["groups"] == [] and got["verdict"] is None


def test_comparison_of_no_runs(service_env: dict[str, str]) -> None:
    with session_scope() as s:
        got = json.loads(b"".join(compare.compare(s, [], metric="seconds")))
        assert got == reference_compare(s, [], metric="seconds")


def test_non_finite_values_stored_by_plain_sql_are_missing_and_named(service_env: dict[str, str]) -> None:
    """NaN and infinity in a float column (the worker stores NULL and a flag; another writer may not): the
    comparison treats them as the worker's rows would read, never writes NaN into JSON."""

    def hostile(rng: random.Random, epoch: int) -> tuple[Any, ...]:
        odd = epoch % 4
        return (
            math.inf if odd == 1 else 1.0,
            0.5,
            math.nan if odd == 2 else 1.0,
            -math.inf if odd == 3 else 0.5,
            0.1,
            0.01,
            '[ "train_loss" ]' if odd == 0 else "[]",
        )

    exp_id = write_experiment(3, configs=1, seeds=2, epochs=8, values=hostile)
    with session_scope() as s:
        body = b"".join(compare.compare(s, runs_of(s, exp_id), metric="min_val_loss", max_points=3))
    assert b"NaN" not in body and b"Infinity" not in body
    got = json.loads(body)
    for run in got["runs"]:
        for p in run["points"]:
            named = {"train_loss"} if p["epoch"] % 4 in (0, 1) else set()
            named |= {"val_loss"} if p["epoch"] % 4 == 2 else set()
            named |= {"val_accuracy"} if p["epoch"] % 4 == 3 else set()
            assert set(p["nonfinite"]) == named, p
            assert all(p[f] is None for f in named)
        assert run["summary"]["min_val_loss"] in (1.0, None)


# --- charts ---------------------------------------------------------------------------------------------------


def reference_series(session: Any, runs: list[Run]) -> list[charts.Series]:
    by_run = reference_points(session, [r.id for r in runs])
    out = []
    for run in runs:
        spec = RunSpec.model_validate(run.spec)
        group = (run.params or {}).get("config") or compare.spec_label(spec, with_seed=False)
        diverged_at = (run.summary or {}).get("diverged_at")
        out.append(
            charts.Series(run.label or compare.spec_label(spec), run.status, by_run.get(run.id, []), diverged_at, group)
        )
    return out


@pytest.mark.parametrize(
    ("metric", "fmt", "log"), [("val_accuracy", "png", False), ("val_loss", "svg", True), ("lr", "svg", False)]
)
def test_chart_bytes_equal_the_reference_path(service_env: dict[str, str], metric: str, fmt: str, log: bool) -> None:
    exp_id = write_experiment(4, configs=3, seeds=3, epochs=30)
    with session_scope() as s:
        runs = runs_of(s, exp_id)
        got = compare.chart(s, runs, metric, fmt=fmt, log_scale=log, title="t")
        want = charts.render_runs_chart(reference_series(s, runs), metric, fmt=fmt, log_scale=log, title="t")  # type: ignore[arg-type]
    assert got == want


def test_chart_of_many_runs_draws_the_same_lines(service_env: dict[str, str]) -> None:
    exp_id = write_experiment(5, configs=9, seeds=3, epochs=25)
    with session_scope() as s:
        runs = runs_of(s, exp_id)
        columns = compare.chart_series(s, runs, "val_loss")
        reference = reference_series(s, runs)
    assert len(runs) > charts.LEGEND_RUNS
    with charts._rendering():
        got, want = charts.draw_runs_chart(columns, "val_loss"), charts.draw_runs_chart(reference, "val_loss")
    got_lines, want_lines = got.axes[0].get_lines(), want.axes[0].get_lines()
    assert len(got_lines) == len(want_lines) >= len(runs)
    for a, b in zip(got_lines, want_lines, strict=True):
        assert a.get_gid() == b.get_gid() and a.get_color() == b.get_color() and a.get_linestyle() == b.get_linestyle()
        assert np.array_equal(a.get_xydata(), b.get_xydata(), equal_nan=True)
    assert got.axes[0].get_ylim() == want.axes[0].get_ylim()
