"""lrlab.reports.exact against the statistics module, bit for bit, on ordinary and hostile samples."""

from __future__ import annotations

import math
import statistics
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lrlab.reports import exact


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def expected(values: np.ndarray) -> tuple[list[float], list[float]]:
    means, stds = [], []
    for j in range(values.shape[1]):
        col = [v for v in values[:, j].tolist() if not math.isnan(v)]
        means.append(statistics.fmean(col) if col else math.nan)
        stds.append(statistics.stdev(col) if len(col) >= 2 else math.nan)
    return means, stds


def assert_same(got: np.ndarray, want: list[float]) -> None:
    bad = [
        (j, g, w)
        for j, (g, w) in enumerate(zip(got.tolist(), want, strict=True))
        if not (math.isnan(g) and math.isnan(w)) and bits(g) != bits(w)
    ]
    assert not bad, bad[:5]


def samples() -> Iterator[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(15)
    x = rng.random(500)
    yield "uniform, 8 seeds", rng.random((8, 3000))
    gaps = rng.normal(0.9, 0.01, (8, 3000))
    gaps[rng.random(gaps.shape) < 0.2] = np.nan
    yield "accuracy-like with gaps", gaps
    yield "two values", rng.normal(0, 1, (2, 3000))
    yield "large mean, tiny spread", rng.normal(1e5, 1e-4, (5, 1000))
    yield "magnitudes over 1e+-20", np.exp(rng.normal(0, 20, (6, 1000)))
    yield "mixed signs", rng.normal(0, 1, (7, 1000)) * 10.0 ** rng.integers(-5, 5, (7, 1000))
    yield "all equal", np.vstack([x] * 4)
    yield "one ulp apart", np.vstack([x, np.nextafter(x, 2), x, np.nextafter(x, -1)])
    yield "quantized accuracies", np.round(rng.random((8, 2000)) * 1437) / 1437
    yield "256 rows", rng.random((256, 200))
    yield "subnormal", rng.random((3, 300)) * 1e-310
    yield "near overflow", np.vstack([rng.random(300) * 1e300, -rng.random(300) * 1e300, rng.random(300)])
    yield "zeros and signed zeros", np.array([[0.0, -0.0, 0.0, 5e-324, 1.0], [-0.0, -0.0, 0.0, 5e-324, 1.0]])
    yield "one present value", np.array([[0.5, np.nan], [np.nan, np.nan], [np.nan, 0.25]])


@pytest.mark.parametrize(("name", "values"), list(samples()), ids=[n for n, _ in samples()])
def test_fmeans_and_stdevs_equal_statistics_bit_for_bit(name: str, values: np.ndarray) -> None:
    means, stds = expected(values)
    assert_same(exact.fmeans(values), means)
    assert_same(exact.stdevs(values), stds)


def test_ordinary_samples_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback is for what the error bound cannot settle; random data of ordinary size never needs it."""
    calls: list[Any] = []
    monkeypatch.setattr(exact.statistics, "stdev", lambda data: calls.append(data) or 0.0)
    monkeypatch.setattr(exact.statistics, "fmean", lambda data: calls.append(data) or 0.0)
    values = np.random.default_rng(3).normal(0.8, 0.05, (8, 20_000))
    exact.fmeans(values), exact.stdevs(values)
    assert calls == []


def test_columns_wider_than_a_block_are_all_computed() -> None:
    values = np.random.default_rng(4).random((3, exact.BLOCK * 2 + 7))
    means, stds = expected(values)
    assert_same(exact.fmeans(values), means)
    assert_same(exact.stdevs(values), stds)
