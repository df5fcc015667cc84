"""Pure analysis of finished curves: summaries, ranking, replicate statistics, seed-noise verdicts, downsampling."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from lrlab.schemas.compare import EpochStat, ReplicateGroup, SamplingInfo, Verdict
from lrlab.schemas.runs import RunStatus, RunSummary

# Which way is better for each summary number a comparison can rank by.
METRICS: dict[str, Literal["max", "min"]] = {
    "best_val_accuracy": "max",
    "final_val_accuracy": "max",
    "min_val_loss": "min",
    "final_val_loss": "min",
    "epochs_to_target": "min",  # None = never reached = worst
    "seconds": "min",
}
# Runs that stopped short of the budget or ended badly rank after every other run, in this order: a run that
# successive halving stopped trained fewer epochs, so its numbers are not compared with those of full runs.
_LAST = (RunStatus.stopped, RunStatus.diverged, RunStatus.failed, RunStatus.cancelled)
# Runs whose summary says nothing about their configuration at the budget: their metric is not used in
# statistics (a verdict compares runs at the same budget, so a stopped run's shorter curve is left out).
_UNUSABLE = (RunStatus.failed, RunStatus.cancelled, RunStatus.stopped)
# Curves of failed runs are left out of per-epoch statistics.
NO_CURVE = (RunStatus.failed,)
CURVE_FIELDS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")

E = TypeVar("E", bound=Mapping[str, Any])


def metric_mode(metric: str) -> Literal["max", "min"]:
    """The direction of `metric`; ValueError names the metric when it is not one of METRICS."""
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"Unknown metric: {metric!r} (expected one of {', '.join(METRICS)})") from None


# --- summaries ----------------------------------------------------------------------------------


def summarize(
    points: Sequence[Mapping[str, Any]],
    *,
    target: float | None = None,
    diverged_at: int | None = None,
    reason: str | None = None,
    early_stopped: bool = False,
) -> RunSummary:
    """Summary numbers of a curve; points are CurvePoint-shaped dicts in epoch order."""
    accs = [(p["val_accuracy"], p["epoch"]) for p in points if p.get("val_accuracy") is not None]
    losses = [p["val_loss"] for p in points if p.get("val_loss") is not None]
    # The earliest epoch wins a tie: max over (accuracy, -epoch).
    best = max(accs, key=lambda a: (a[0], -a[1]), default=None)
    reached = None if target is None else next((e for a, e in accs if a >= target), None)
    last = points[-1] if points else {}
    return RunSummary(
        epochs_completed=len(points),
        best_val_accuracy=best[0] if best else None,
        best_epoch=best[1] if best else None,
        final_val_accuracy=last.get("val_accuracy"),
        final_val_loss=last.get("val_loss"),
        min_val_loss=min(losses, default=None),
        seconds=math.fsum(p.get("seconds") or 0.0 for p in points),
        epochs_to_target=reached,
        diverged_at=diverged_at,
        reason=reason,
        early_stopped=early_stopped,
    )


def summary_value(entry: Mapping[str, Any], metric: str) -> float | None:
    """entry["summary"][metric] as a float; None when absent or not finite. The summary may be a dict or a model."""
    summary = entry.get("summary")
    if summary is None:
        return None
    value = getattr(summary, metric, None) if isinstance(summary, BaseModel) else summary.get(metric)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# --- ranking ------------------------------------------------------------------------------------


def rank(entries: Sequence[E], metric: str) -> list[E]:
    """A new list, best first by summary[metric]; None metrics, then stopped, diverged, failed, cancelled runs come
    last (a run stopped by successive halving trained less: it ranks after every run that had the full budget).

    Within each tier runs are ordered by the metric with None last; ties keep their original order.
    """
    sign = 1.0 if metric_mode(metric) == "min" else -1.0

    def key(entry: E) -> tuple[int, bool, float]:
        value = summary_value(entry, metric)
        status = str(entry.get("status"))
        tier = 2 + _LAST.index(status) if status in _LAST else int(value is None)
        return tier, value is None, sign * value if value is not None else 0.0

    return sorted(entries, key=key)  # sorted is stable


# --- replicates ---------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) >= 2 else None


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _epoch_stats(curves: Sequence[Sequence[Mapping[str, Any]]]) -> list[EpochStat]:
    """Per epoch, over the runs that have that epoch: a diverged or shorter run drops out instead of truncating."""
    by_epoch: dict[int, list[Mapping[str, Any]]] = {}
    for curve in curves:
        for point in curve:
            by_epoch.setdefault(int(point["epoch"]), []).append(point)
    stats = []
    for epoch in sorted(by_epoch):
        at = by_epoch[epoch]
        row: dict[str, Any] = {"epoch": epoch, "n": len(at)}
        for field in CURVE_FIELDS:
            row[f"{field}_mean"], row[f"{field}_std"] = _mean_std([p[field] for p in at if _finite(p.get(field))])
        stats.append(EpochStat.model_validate(row))
    return stats


def group_replicates(entries: Sequence[Mapping[str, Any]], metric: str) -> list[ReplicateGroup]:
    """Group runs by entry["config"] (the configuration without its seed); best mean first, None means last.

    An entry has "run_id", "config", "seed", "status", "summary" and "points". The metric of a failed or
    cancelled run is not used (None in `metric_values`); a failed run's curve is left out of the epoch stats.
    """
    mode = metric_mode(metric)
    members: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        members.setdefault(str(entry["config"]), []).append(entry)
    groups = []
    for label, runs in members.items():
        values = [None if str(r.get("status")) in _UNUSABLE else summary_value(r, metric) for r in runs]
        mean, std = _mean_std([v for v in values if v is not None])
        groups.append(
            ReplicateGroup(
                label=label,
                run_ids=[str(r["run_id"]) for r in runs],
                seeds=[int(r["seed"]) for r in runs],
                n=len(runs),
                metric_values=values,
                mean=mean,
                std=std,
                epochs=_epoch_stats([r.get("points") or [] for r in runs if str(r.get("status")) not in NO_CURVE]),
            )
        )
    sign = 1.0 if mode == "min" else -1.0
    return sorted(groups, key=lambda g: (g.mean is None, sign * g.mean if g.mean is not None else 0.0))


# --- Student's t, without scipy (the api image has none) -------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, by the modified Lentz method."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        # Even step d_{2m} = m(b-m)x / ((a+2m-1)(a+2m)), then odd step d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)).
        for coef in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),
        ):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coef / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _beta_inc(a: float, b: float, x: float, y: float) -> float:
    """Regularized incomplete beta I_x(a, b); y = 1 - x is passed separately to keep its precision."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y))
    # The fraction converges fast only left of the mean; otherwise use I_x(a, b) = 1 - I_y(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, y) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0: half of I_{df/(df+t^2)}(df/2, 1/2)."""
    denom = df + t * t
    return 0.5 * _beta_inc(df / 2.0, 0.5, df / denom, t * t / denom)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (possibly fractional) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"Invalid degrees of freedom: {df}")
    tail = _t_upper_tail(abs(t), df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t: bisection on the upper tail, to ~1e-12 relative (t_{0.975, 10} = 2.228...)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"Invalid probability: {p}")
    if df <= 0:
        raise ValueError(f"Invalid degrees of freedom: {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    q = 1.0 - p
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > q:  # the tail falls as t grows: bracket the root
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if _t_upper_tail(mid, df) > q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --- verdict ------------------------------------------------------------------------------------


def _values_by_seed(group: ReplicateGroup) -> dict[int, float] | None:
    """Seed -> usable metric value; None when a seed repeats (pairing by seed would be ambiguous)."""
    if len(set(group.seeds)) != len(group.seeds):
        return None
    return {s: v for s, v in zip(group.seeds, group.metric_values, strict=True) if v is not None}


def verdict(best: ReplicateGroup, other: ReplicateGroup, metric: str, confidence: float = 0.95) -> Verdict:
    """Is the better group better beyond seed noise? A t-interval on the difference of means.

    Groups sharing 2+ seeds are paired by seed (paired t on per-seed differences); otherwise Welch's t with
    Welch-Satterthwaite degrees of freedom. `better` is whichever group the estimate favours in the metric's
    direction, and difference = better - other, so it is negative for a "min" metric. Significant means the
    interval excludes 0.
    """
    mode = metric_mode(metric)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Invalid confidence: {confidence}")
    a = [v for v in best.metric_values if v is not None]
    b = [v for v in other.metric_values if v is not None]
    a_seeds, b_seeds = _values_by_seed(best), _values_by_seed(other)
    shared = [s for s in a_seeds if s in b_seeds] if a_seeds is not None and b_seeds is not None else []
    method: Literal["paired t", "welch t"] | None
    note = None
    if len(shared) >= 2:
        assert a_seeds is not None and b_seeds is not None
        diffs = [a_seeds[s] - b_seeds[s] for s in shared]
        method, difference = "paired t", statistics.fmean(diffs)
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        df = len(diffs) - 1.0
        if len(shared) < max(len(a), len(b)):
            note = f"paired on {len(shared)} shared seeds; runs with other seeds are left out"
    elif len(a) >= 2 and len(b) >= 2:
        method, difference = "welch t", statistics.fmean(a) - statistics.fmean(b)
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        se = math.sqrt(va + vb)
        # Welch-Satterthwaite; with no spread at all the interval is a point and df does not matter.
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else math.inf
    else:
        method, difference, se, df = None, None, 0.0, math.inf
        if a and b:
            difference = statistics.fmean(a) - statistics.fmean(b)
        note = "needs at least 2 seeds per configuration"

    swap = difference is not None and (difference < 0 if mode == "max" else difference > 0)
    better, worse = (other, best) if swap else (best, other)
    n_better, n_other = (len(b), len(a)) if swap else (len(a), len(b))
    if difference is not None and swap:
        difference = -difference
    ci_low = ci_high = None
    significant = False
    if method is not None and difference is not None:
        if se > 0:
            half = t_quantile(0.5 + confidence / 2.0, df) * se
            ci_low, ci_high = difference - half, difference + half
        else:
            ci_low = ci_high = difference
            note = "no spread between seeds: the interval is a single point"
        significant = ci_low > 0 or ci_high < 0
    return Verdict(
        better=better.label,
        other=worse.label,
        metric=metric,
        difference=difference,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=confidence,
        method=method,
        n_better=n_better,
        n_other=n_other,
        n_pairs=len(shared) if method == "paired t" else None,
        significant=significant,
        note=note,
    )


# --- downsampling -------------------------------------------------------------------------------


def _spread(candidates: Sequence[int], k: int) -> list[int]:
    """k of the candidates, one from the middle of each of k equal bins (all of them when k >= len)."""
    if k <= 0:
        return []
    if k >= len(candidates):
        return list(candidates)
    width = len(candidates) / k  # >= 1, so the picks are distinct
    return [candidates[math.floor((j + 0.5) * width)] for j in range(k)]


def _extreme_index(points: Sequence[Mapping[str, Any]], field: str, mode: Literal["max", "min"]) -> int | None:
    """Index of the earliest best value of `field`, or None when it has no finite value."""
    found = [(p[field], i) for i, p in enumerate(points) if _finite(p.get(field))]
    if not found:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(found, key=lambda f: (sign * f[0], f[1]))[1]


P = TypeVar("P", bound=Mapping[str, Any])


def downsample(points: Sequence[P], max_points: int) -> tuple[list[P], SamplingInfo]:
    """At most `max_points` of a curve, in order, for display. Deterministic.

    Kept first, by priority: the first and last epochs, the first non-finite epoch (divergence), the best
    val_accuracy and the minimum val_loss, the other non-finite epochs (evenly, if they do not all fit);
    the remaining slots are spread evenly over the rest.
    """
    if max_points < 2:
        raise ValueError(f"Invalid max_points: {max_points} (at least 2)")
    n = len(points)
    if n <= max_points:
        return list(points), SamplingInfo(sampled=False, method=None, n_raw=n, n_returned=n)
    nonfinite = [i for i, p in enumerate(points) if p.get("nonfinite")]
    priority = [
        0,
        n - 1,
        *nonfinite[:1],
        _extreme_index(points, "val_accuracy", "max"),
        _extreme_index(points, "val_loss", "min"),
    ]
    keep: list[int] = []
    for i in priority:
        if i is not None and i not in keep and len(keep) < max_points:
            keep.append(i)
    keep += _spread([i for i in nonfinite if i not in keep], max_points - len(keep))
    kept = set(keep)
    keep += _spread([i for i in range(n) if i not in kept], max_points - len(keep))
    chosen = sorted(keep)
    return [points[i] for i in chosen], SamplingInfo(
        sampled=True, method="uniform+extrema", n_raw=n, n_returned=len(chosen)
    )
