"""The rung rule: rungs at g·η^k, the top n // η (at least one) continue, asynchronous arrivals judged as ASHA."""

from __future__ import annotations

import math
import random

import pytest

from lrlab.search.asha import judge, keep_count, rungs


def test_rungs_geometric_below_max() -> None:
    assert rungs(1, 3, 9) == [1, 3]
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(2, 2, 17) == [2, 4, 8, 16]
    assert rungs(5, 3, 5) == []


@pytest.mark.parametrize(("grace", "eta"), [(0, 3), (1, 1)])
def test_rungs_invalid(grace: int, eta: int) -> None:
    with pytest.raises(ValueError, match="Invalid rungs"):
        rungs(grace, eta, 9)


def test_keep_count_floor_at_least_one() -> None:
    assert [keep_count(n, 3) for n in (1, 2, 3, 5, 6, 8, 9, 27)] == [1, 1, 1, 1, 2, 2, 3, 9]


def test_judge_pack_keeps_top_third_by_accuracy() -> None:
    scores = [0.1 * i for i in range(9)]  # member 8 best
    random.Random(0).shuffle(scores)
    keep = judge([], scores, 3, "max")
    assert sum(keep) == 3
    assert sorted(s for s, k in zip(scores, keep, strict=True) if k) == sorted(scores)[-3:]


def test_judge_pack_min_mode_keeps_lowest_loss() -> None:
    assert judge([], [0.5, 0.2, 0.9, 0.1, 0.3, 0.4], 3, "min") == [False, True, False, True, False, False]


def test_judge_pack_of_27_keeps_9() -> None:
    assert sum(judge([], [float(i) for i in range(27)], 3, "max")) == 9


def test_judge_small_pack_keeps_one() -> None:
    assert judge([], [0.3, 0.7], 3, "max") == [False, True]


def test_judge_first_arrival_continues_then_asynchronous() -> None:
    """ASHA: the first run at a rung continues; later ones must be in the top n // η of all reported."""
    assert judge([], [0.2], 3, "max") == [True]
    assert judge([0.2], [0.1], 3, "max") == [False]  # 2 reported: keep 1, the 0.2
    assert judge([0.2], [0.5], 3, "max") == [True]
    assert judge([0.2, 0.5, 0.4, 0.3, 0.1], [0.45], 3, "max") == [True]  # 6 reported: keep 2 (0.5, 0.45)
    assert judge([0.2, 0.5, 0.4, 0.3, 0.1], [0.35], 3, "max") == [False]


def test_judge_pack_against_earlier_reports() -> None:
    """A second pack is ranked with the first pack's reports: 6 in all keep 2."""
    first = [0.9, 0.1, 0.2]
    assert judge(first, [0.8, 0.3, 0.4], 3, "max") == [True, False, False]


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_judge_nonfinite_ranks_last(bad: float | None) -> None:
    for mode in ("max", "min"):
        assert judge([], [bad, 0.5, 0.6], 3, mode) == [False, mode == "min", mode == "max"]  # type: ignore[arg-type]
        assert judge([], [bad], 3, mode) == [True]  # type: ignore[arg-type]  # alone, it still is the top one


def test_judge_ties_exact_count_earlier_first() -> None:
    assert judge([], [0.5] * 6, 3, "max") == [True, True, False, False, False, False]
    assert judge([0.5], [0.5], 2, "max") == [False]


def test_judge_empty_arrivals() -> None:
    assert judge([0.1, 0.2], [], 3, "max") == []
