"""lrlab.reports.columnar gives what lrlab.reports.analysis gives for the same points: summaries, replicate
statistics per epoch and downsampling, on curves with gaps, missing values, ties and non-finite epochs."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from lrlab.reports import analysis, columnar
from lrlab.reports.curves import FIELDS, Curve


def curve_of(points: list[dict[str, Any]]) -> Curve:
    """The Curve lrlab.reports.curves would read for these stored points."""
    columns = {f: np.array([math.nan if p[f] is None else p[f] for p in points], dtype=np.float64) for f in FIELDS}
    flags = {i: list(p["nonfinite"]) for i, p in enumerate(points) if p["nonfinite"]}
    return Curve(np.array([p["epoch"] for p in points], dtype=np.int64), columns, flags)


def random_points(rng: random.Random, n: int, *, quantized: bool = False) -> list[dict[str, Any]]:
    """n points over epochs with gaps; some values missing; accuracies with ties; a few non-finite epochs."""
    epoch, points = 0, []
    for _ in range(n):
        epoch += rng.choice((1, 1, 1, 2, 5))
        acc = round(rng.random(), 2) if quantized else rng.random()
        point = {
            "epoch": epoch,
            "train_loss": rng.random() * 3,
            "train_accuracy": rng.random(),
            "val_loss": rng.random() * 3 if rng.random() > 0.05 else None,
            "val_accuracy": acc if rng.random() > 0.05 else None,
            "lr": rng.choice((0.1, 0.01)),
            "seconds": rng.random() / 10,
            "nonfinite": [],
        }
        if rng.random() < 0.03:
            point.update(train_loss=None, val_loss=None, nonfinite=["train_loss", "val_loss"])
        points.append(point)
    return points


CASES = [(seed, n, q) for seed in range(12) for n, q in ((0, False), (1, False), (7, True), (60, False), (300, True))]


@pytest.mark.parametrize(("seed", "n", "quantized"), CASES)
def test_summarize_equals_analysis(seed: int, n: int, quantized: bool) -> None:
    points = random_points(random.Random(seed), n, quantized=quantized)
    for target in (None, 0.0, 0.5, 0.99, 1.5):
        kw: dict[str, Any] = {"target": target, "diverged_at": 3, "reason": "x", "early_stopped": True}
        assert columnar.summarize(curve_of(points), **kw) == analysis.summarize(points, **kw)


@pytest.mark.parametrize(("seed", "n", "quantized"), CASES)
def test_downsample_rows_pick_what_analysis_picks(seed: int, n: int, quantized: bool) -> None:
    points = random_points(random.Random(seed), n, quantized=quantized)
    curve = curve_of(points)
    for max_points in (2, 3, 5, 17, 100, 1000):
        rows, info = columnar.downsample_rows(curve, max_points)
        want, want_info = analysis.downsample(points, max_points)
        assert curve.points(rows.tolist()) == want and info == want_info
    with pytest.raises(ValueError, match="max_points"):
        columnar.downsample_rows(curve, 1)


def test_downsample_keeps_many_nonfinite_epochs_as_analysis_does() -> None:
    rng = random.Random(7)
    points = random_points(rng, 200)
    for p in points[::3]:
        p.update(val_loss=None, nonfinite=["val_loss"])
    rows, info = columnar.downsample_rows(curve_of(points), 20)
    assert (curve_of(points).points(rows.tolist()), info) == analysis.downsample(points, 20)


@pytest.mark.parametrize("seed", range(8))
def test_epoch_stats_equal_analysis_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    groups = [
        [random_points(rng, rng.choice((0, 3, 40)), quantized=rng.random() < 0.5) for _ in range(k)]
        for k in (1, 2, 5, 8)
    ]
    got = columnar.epoch_stats([[curve_of(c) for c in g] for g in groups])
    for stats, curves in zip(got, groups, strict=True):
        want = analysis._epoch_stats(curves)
        rows = []
        for i, e in enumerate(stats.epoch.tolist()):
            row: dict[str, Any] = {"epoch": e, "n": int(stats.n[i])}
            for f in analysis.CURVE_FIELDS:
                for kind, col in (("mean", stats.mean[f]), ("std", stats.std[f])):
                    v = float(col[i])
                    row[f"{f}_{kind}"] = None if math.isnan(v) else v
            rows.append(row)
        assert rows == [w.model_dump() for w in want]
