"""Summaries, ranking, replicate statistics, t-interval verdicts and downsampling, checked by hand."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import pytest

from lrlab.reports.analysis import (
    METRICS,
    downsample,
    group_replicates,
    rank,
    summarize,
    t_cdf,
    t_quantile,
    verdict,
)
from lrlab.schemas.compare import ReplicateGroup
from lrlab.schemas.runs import RunStatus


def point(epoch: int, acc: float | None = None, loss: float | None = None, **extra: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "epoch": epoch,
        "train_loss": None,
        "train_accuracy": None,
        "val_loss": loss,
        "val_accuracy": acc,
        "lr": 0.1,
        "seconds": 1.0,
        "nonfinite": [],
    }
    p.update(extra)
    return p


def entry(run_id: str, status: str | RunStatus, **summary: Any) -> dict[str, Any]:
    return {"run_id": run_id, "status": status, "summary": summary}


def group(label: str, seeds: list[int], values: Sequence[float | None]) -> ReplicateGroup:
    usable = [v for v in values if v is not None]
    return ReplicateGroup(
        label=label,
        run_ids=[f"{label}-{s}" for s in seeds],
        seeds=seeds,
        n=len(seeds),
        metric_values=list(values),
        mean=statistics.fmean(usable) if usable else None,
    )


# --- summarize ----------------------------------------------------------------------------------


def test_summarize_best_epoch_tie_takes_earliest() -> None:
    pts = [
        point(1, 0.5, 1.2, seconds=1.5),
        point(2, 0.8, 0.9, seconds=2.0),
        point(3, 0.8, 0.7, seconds=2.5),
        point(4, 0.7, 0.8, seconds=3.0),
    ]
    s = summarize(pts)
    assert (s.epochs_completed, s.best_val_accuracy, s.best_epoch) == (4, 0.8, 2)
    assert (s.final_val_accuracy, s.final_val_loss, s.min_val_loss) == (0.7, 0.8, 0.7)
    assert s.seconds == 9.0
    assert s.epochs_to_target is None
    assert (s.diverged_at, s.reason, s.early_stopped) == (None, None, False)


def test_summarize_none_values_skipped() -> None:
    pts = [point(1, 0.3, 2.0), point(2, None, 1.5), point(3, 0.4, None, nonfinite=["val_loss"])]
    s = summarize(pts, diverged_at=3, reason="val_loss is nan")
    assert (s.best_val_accuracy, s.best_epoch, s.min_val_loss) == (0.4, 3, 1.5)
    assert (s.final_val_accuracy, s.final_val_loss) == (0.4, None)
    assert (s.diverged_at, s.reason) == (3, "val_loss is nan")


def test_summarize_target_reached_at_first_epoch_meeting_it() -> None:
    pts = [point(1, 0.5), point(2, 0.9), point(3, 0.85), point(4, 0.95)]
    assert summarize(pts, target=0.85).epochs_to_target == 2
    assert summarize(pts, target=0.9).epochs_to_target == 2  # >= counts
    assert summarize(pts, target=0.99).epochs_to_target is None
    assert summarize(pts, target=0.99, early_stopped=True).early_stopped is True


def test_summarize_empty_curve() -> None:
    s = summarize([], target=0.5)
    assert (s.epochs_completed, s.best_val_accuracy, s.final_val_loss, s.seconds) == (0, None, None, 0.0)


# --- rank ---------------------------------------------------------------------------------------


def test_rank_max_metric_best_first_bad_runs_last() -> None:
    entries = [
        entry("cancelled", "cancelled", best_val_accuracy=0.99),
        entry("low", "succeeded", best_val_accuracy=0.6),
        entry("failed", "failed", best_val_accuracy=0.98),
        entry("diverged", RunStatus.diverged, best_val_accuracy=0.97),  # the enum works as well as its value
        entry("none", "succeeded", best_val_accuracy=None),
        entry("high", "succeeded", best_val_accuracy=0.9),
        {"run_id": "queued", "status": "queued", "summary": None},
        entry("running", "running", best_val_accuracy=0.7),
    ]
    before = [dict(e) for e in entries]
    ranked = rank(entries, "best_val_accuracy")
    assert [e["run_id"] for e in ranked] == [
        "high",
        "running",
        "low",
        "none",
        "queued",
        "diverged",
        "failed",
        "cancelled",
    ]
    assert entries == before  # nothing mutated
    assert ranked is not entries


def test_rank_min_metric_lower_first_never_reached_last() -> None:
    entries = [
        entry("slow", "succeeded", epochs_to_target=9),
        entry("never", "succeeded", epochs_to_target=None),
        entry("fast", "succeeded", epochs_to_target=3),
        entry("diverged-fast", "diverged", epochs_to_target=1),
        entry("mid", "succeeded", epochs_to_target=5),
    ]
    assert [e["run_id"] for e in rank(entries, "epochs_to_target")] == ["fast", "mid", "slow", "never", "diverged-fast"]


def test_rank_ties_keep_original_order() -> None:
    entries = [entry(str(i), "succeeded", min_val_loss=v) for i, v in enumerate([0.5, 0.2, 0.5, 0.2])]
    assert [e["run_id"] for e in rank(entries, "min_val_loss")] == ["1", "3", "0", "2"]


def test_rank_unknown_metric_raises() -> None:
    with pytest.raises(ValueError, match="accuracy_at_noon"):
        rank([], "accuracy_at_noon")


def test_metrics_directions() -> None:
    assert METRICS == {
        "best_val_accuracy": "max",
        "final_val_accuracy": "max",
        "min_val_loss": "min",
        "final_val_loss": "min",
        "epochs_to_target": "min",
        "seconds": "min",
    }


# --- group_replicates ---------------------------------------------------------------------------


def replicate(run_id: str, config: str, seed: int, status: str, curve: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "config": config,
        "seed": seed,
        "status": status,
        "summary": summarize(curve).model_dump(),
        "points": curve,
    }


def test_group_replicates_mean_std_per_epoch_by_hand() -> None:
    a0 = [point(1, 0.50, 1.0, train_loss=1.1), point(2, 0.70, 0.8, train_loss=0.9), point(3, 0.80, 0.6)]
    a1 = [point(1, 0.40, 1.2, train_loss=1.3), point(2, 0.60, 0.9, train_loss=1.0), point(3, 0.90, 0.5)]
    # Seed 2 diverged at epoch 2: it counts at epoch 1, its None values at epoch 2 are skipped, no epoch 3.
    a2 = [point(1, 0.45, 1.1, train_loss=1.2), point(2, None, None, nonfinite=["val_loss"])]
    b0 = [point(1, 0.30, 2.0), point(2, 0.35, 1.9)]
    b1 = [point(1, 0.20, 2.1), point(2, 0.25, 2.0)]
    failed = [point(1, 0.99, 0.01)]
    entries = [
        replicate("b0", "sgd lr=1", 0, "succeeded", b0),
        replicate("a0", "adam lr=1e-3", 0, "succeeded", a0),
        replicate("a1", "adam lr=1e-3", 1, "succeeded", a1),
        replicate("b1", "sgd lr=1", 1, "succeeded", b1),
        replicate("a2", "adam lr=1e-3", 2, "diverged", a2),
        replicate("bf", "sgd lr=1", 2, "failed", failed),
    ]
    groups = group_replicates(entries, "best_val_accuracy")

    assert [g.label for g in groups] == ["adam lr=1e-3", "sgd lr=1"]  # best mean first
    adam, sgd = groups
    assert (adam.run_ids, adam.seeds, adam.n) == (["a0", "a1", "a2"], [0, 1, 2], 3)
    assert adam.metric_values == [0.80, 0.90, 0.45]
    assert adam.mean == pytest.approx(statistics.fmean([0.80, 0.90, 0.45]))
    assert adam.std == pytest.approx(statistics.stdev([0.80, 0.90, 0.45]))
    assert [e.epoch for e in adam.epochs] == [1, 2, 3]
    assert [e.n for e in adam.epochs] == [3, 3, 2]
    e1, e2, e3 = adam.epochs
    assert e1.val_accuracy_mean == pytest.approx(statistics.fmean([0.50, 0.40, 0.45]))
    assert e1.val_accuracy_std == pytest.approx(statistics.stdev([0.50, 0.40, 0.45]))
    assert e1.val_loss_mean == pytest.approx(statistics.fmean([1.0, 1.2, 1.1]))
    assert e1.train_loss_std == pytest.approx(statistics.stdev([1.1, 1.3, 1.2]))
    assert e1.train_accuracy_mean is None and e1.train_accuracy_std is None
    assert e2.val_accuracy_mean == pytest.approx(statistics.fmean([0.70, 0.60]))
    assert e2.val_loss_std == pytest.approx(statistics.stdev([0.8, 0.9]))
    assert e3.val_accuracy_mean == pytest.approx(0.85)
    assert e3.train_loss_mean is None and e3.train_loss_std is None

    # The failed run keeps its place in the lists but gives no metric value and no curve.
    assert (sgd.run_ids, sgd.n, sgd.metric_values) == (["b0", "b1", "bf"], 3, [0.35, 0.25, None])
    assert sgd.mean == pytest.approx(0.30)
    assert sgd.std == pytest.approx(statistics.stdev([0.35, 0.25]))
    assert [(e.epoch, e.n) for e in sgd.epochs] == [(1, 2), (2, 2)]
    assert sgd.epochs[0].val_accuracy_mean == pytest.approx(0.25)


def test_group_replicates_min_metric_orders_lower_first_single_run_has_no_std() -> None:
    entries = [
        replicate("x", "high", 0, "succeeded", [point(1, 0.5, 0.9)]),
        replicate("y", "low", 0, "succeeded", [point(1, 0.5, 0.3)]),
        replicate("z", "nothing", 0, "succeeded", [point(1, 0.5, None)]),
    ]
    entries[1]["summary"] = summarize(entries[1]["points"])  # a RunSummary model reads like its dict
    groups = group_replicates(entries, "min_val_loss")
    assert [g.label for g in groups] == ["low", "high", "nothing"]
    assert (groups[0].mean, groups[0].std) == (0.3, None)
    assert (groups[2].mean, groups[2].std) == (None, None)
    assert groups[0].epochs[0].val_loss_std is None


# --- Student's t --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042), (1_000_000, 1.960)],
)
def test_t_quantile_matches_table_975(df: float, expected: float) -> None:
    assert round(t_quantile(0.975, df), 3) == expected


def test_t_quantile_other_levels_and_symmetry() -> None:
    assert round(t_quantile(0.995, 5), 3) == 4.032
    assert round(t_quantile(0.95, 8), 3) == 1.860
    assert round(t_quantile(0.9, 20), 3) == 1.325
    assert t_quantile(0.5, 7) == 0.0
    assert t_quantile(0.025, 6) == pytest.approx(-t_quantile(0.975, 6), rel=1e-12)
    for p, df in [(0.975, 2.5), (0.999, 3), (0.6, 40)]:
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, rel=1e-10)
    with pytest.raises(ValueError, match="probability"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.9, 0)


def test_t_quantile_agrees_with_scipy_on_a_grid() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 1.7, 2, 3.4, 5, 9, 17.2, 60, 500):
        for p in (0.55, 0.8, 0.95, 0.975, 0.99, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


# --- verdict ------------------------------------------------------------------------------------


def test_verdict_paired_by_shared_seeds() -> None:
    a = group("adam", [0, 1, 2], [0.90, 0.92, 0.91])
    b = group("sgd", [2, 0, 1], [0.87, 0.85, 0.88])  # seed order differs: pairing is by seed, not position
    v = verdict(a, b, "best_val_accuracy")
    diffs = [0.90 - 0.85, 0.92 - 0.88, 0.91 - 0.87]
    d = statistics.fmean(diffs)
    half = 4.303 * statistics.stdev(diffs) / math.sqrt(3)  # t_{0.975, 2} from the table
    assert (v.method, v.n_pairs, v.n_better, v.n_other) == ("paired t", 3, 3, 3)
    assert (v.better, v.other, v.metric, v.confidence) == ("adam", "sgd", "best_val_accuracy", 0.95)
    assert v.difference == pytest.approx(d)
    assert v.ci_low == pytest.approx(d - half, rel=1e-3)
    assert v.ci_high == pytest.approx(d + half, rel=1e-3)
    assert v.significant is True
    assert v.note is None


def test_verdict_welch_when_seeds_differ() -> None:
    a = [0.80, 0.84, 0.79, 0.83]
    b = [0.78, 0.74, 0.80]
    v = verdict(group("a", [0, 1, 2, 3], a), group("b", [10, 11, 12], b), "final_val_accuracy")
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    d = statistics.fmean(a) - statistics.fmean(b)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert (v.method, v.n_pairs, v.n_better, v.n_other) == ("welch t", None, 4, 3)
    assert v.difference == pytest.approx(d)
    assert (v.ci_low, v.ci_high) == (pytest.approx(d - half), pytest.approx(d + half))
    assert 2 < df < 5  # fractional Welch-Satterthwaite df, between the smaller n - 1 and n_a + n_b - 2
    assert d - half < 0 < d + half  # t_{0.975, 3.7} ~ 2.87 widens the interval past 0
    assert v.significant is False


def test_verdict_not_significant_when_interval_spans_zero() -> None:
    v = verdict(
        group("a", [0, 1, 2], [0.90, 0.80, 0.85]), group("b", [0, 1, 2], [0.82, 0.86, 0.84]), "best_val_accuracy"
    )
    assert v.method == "paired t"
    assert v.ci_low is not None and v.ci_high is not None
    assert v.ci_low < 0 < v.ci_high
    assert v.significant is False


def test_verdict_min_metric_better_is_lower_difference_negative() -> None:
    high = group("high", [0, 1, 2], [0.50, 0.55, 0.52])
    low = group("low", [0, 1, 2], [0.30, 0.33, 0.31])
    v = verdict(high, low, "min_val_loss")  # passed in the "wrong" order: the verdict puts the better first
    assert (v.better, v.other) == ("low", "high")
    diffs = [0.30 - 0.50, 0.33 - 0.55, 0.31 - 0.52]
    assert v.difference == pytest.approx(statistics.fmean(diffs))
    assert v.ci_high is not None and v.ci_high < 0
    assert v.significant is True


def test_verdict_swaps_when_other_is_better_on_max_metric() -> None:
    v = verdict(group("a", [0, 1], [0.6, 0.7]), group("b", [5, 6, 7], [0.8, 0.9, 0.85]), "best_val_accuracy")
    assert (v.better, v.other, v.n_better, v.n_other, v.method) == ("b", "a", 3, 2, "welch t")
    assert v.difference == pytest.approx(0.85 - 0.65)
    assert v.difference is not None and v.ci_low is not None and v.ci_high is not None
    assert v.ci_low < v.difference < v.ci_high


@pytest.mark.parametrize(
    ("a_values", "b_values"),
    [([0.9], [0.8, 0.7]), ([0.9, None], [0.8, 0.7]), ([0.9, 0.8], [None, None])],
)
def test_verdict_fewer_than_two_seeds_gives_note(a_values: list[float | None], b_values: list[float | None]) -> None:
    v = verdict(group("a", [0, 1][: len(a_values)], a_values), group("b", [0, 1], b_values), "best_val_accuracy")
    assert v.significant is False
    assert (v.ci_low, v.ci_high, v.method, v.n_pairs) == (None, None, None, None)
    assert v.note == "needs at least 2 seeds per configuration"


def test_verdict_paired_on_shared_seeds_only_notes_the_rest() -> None:
    a = group("a", [0, 1, 2], [0.9, 0.8, 0.85])
    b = group("b", [0, 1, 7], [0.7, 0.75, 0.1])
    v = verdict(a, b, "best_val_accuracy")
    assert (v.method, v.n_pairs) == ("paired t", 2)
    assert v.difference == pytest.approx(statistics.fmean([0.2, 0.05]))
    assert v.note is not None and "2 shared seeds" in v.note


def test_verdict_unknown_metric_raises() -> None:
    with pytest.raises(ValueError, match="Unknown metric"):
        verdict(group("a", [0], [1.0]), group("b", [0], [1.0]), "loss_at_dawn")


# --- downsample ---------------------------------------------------------------------------------


def test_downsample_short_curve_unchanged() -> None:
    pts = [point(e, 0.1 * e) for e in range(1, 6)]
    out, info = downsample(pts, 5)
    assert out == pts and all(a is b for a, b in zip(out, pts, strict=True))
    assert (info.sampled, info.method, info.n_raw, info.n_returned) == (False, None, 5, 5)


def test_downsample_keeps_first_last_extrema_nonfinite_exact_count() -> None:
    pts = [point(e, 0.5, 1.0) for e in range(1, 201)]
    pts[36]["val_accuracy"] = 0.9  # epoch 37: best accuracy
    pts[120]["val_accuracy"] = 0.9  # a later tie does not count
    pts[150]["val_loss"] = 0.2  # epoch 151: lowest loss
    for i in (88, 171):
        pts[i]["nonfinite"] = ["train_loss"]
    out, info = downsample(pts, 20)
    epochs = [p["epoch"] for p in out]
    assert len(out) == 20
    assert (info.sampled, info.method, info.n_raw, info.n_returned) == (True, "uniform+extrema", 200, 20)
    assert {1, 200, 37, 151, 89, 172} <= set(epochs)
    assert epochs == sorted(epochs) and len(set(epochs)) == 20
    # Evenly spread: no gap between kept epochs is far beyond the uniform spacing of 200 / 20.
    assert max(b - a for a, b in zip(epochs, epochs[1:], strict=False)) <= 20
    assert downsample(pts, 20)[0] == out  # deterministic


def test_downsample_too_many_special_points_keeps_priority_and_count() -> None:
    pts = [point(e, 0.01 * e, 1.0 / e, nonfinite=["val_loss"] if e > 90 else []) for e in range(1, 101)]
    out, info = downsample(pts, 5)
    epochs = [p["epoch"] for p in out]
    assert len(out) == info.n_returned == 5
    # First, last, the first non-finite epoch, then best accuracy / min loss (epoch 100 here), then more non-finite.
    assert {1, 100, 91} <= set(epochs)
    assert all(e > 90 for e in epochs if e != 1)
    out2, _ = downsample(pts, 2)
    assert [p["epoch"] for p in out2] == [1, 100]


def test_downsample_max_points_below_two_raises() -> None:
    with pytest.raises(ValueError, match="max_points"):
        downsample([point(1), point(2)], 1)
