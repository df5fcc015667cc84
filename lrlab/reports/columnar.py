"""lrlab.reports.analysis's summaries, per-epoch replicate statistics and downsampling, computed on curves held
as columns (lrlab.reports.curves) with numpy. Each gives exactly what its analysis.py counterpart gives for the
same points (tests/lrlab/reports/test_columnar.py holds them together): same floats, same epochs, same picks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lrlab.reports import exact
from lrlab.reports.analysis import CURVE_FIELDS
from lrlab.reports.curves import Curve
from lrlab.schemas.compare import SamplingInfo
from lrlab.schemas.runs import RunSummary


def _first_at(values: np.ndarray, target: float) -> int:
    """Index of the first element equal to `target` (which is in `values`)."""
    return int(np.flatnonzero(values == target)[0])


def summarize(
    curve: Curve,
    *,
    target: float | None = None,
    diverged_at: int | None = None,
    reason: str | None = None,
    early_stopped: bool = False,
) -> RunSummary:
    """analysis.summarize of the curve's points."""
    acc, loss = curve.columns["val_accuracy"], curve.columns["val_loss"]
    has_acc, has_loss = ~np.isnan(acc), ~np.isnan(loss)
    best_value = best_epoch = None
    if has_acc.any():
        # max over (accuracy, -epoch): the earliest of the best
        i = _first_at(np.where(has_acc, acc, -np.inf), float(np.max(acc[has_acc])))
        best_value, best_epoch = float(acc[i]), int(curve.epoch[i])
    reached = None
    if target is not None and (hits := np.flatnonzero(has_acc & (acc >= target))).size:
        reached = int(curve.epoch[hits[0]])
    min_loss = None
    if has_loss.any():
        min_loss = float(loss[_first_at(np.where(has_loss, loss, np.inf), float(np.min(loss[has_loss])))])
    seconds = curve.columns["seconds"]
    last = len(curve) - 1
    return RunSummary(
        epochs_completed=len(curve),
        best_val_accuracy=best_value,
        best_epoch=best_epoch,
        final_val_accuracy=None if last < 0 or not has_acc[last] else float(acc[last]),
        final_val_loss=None if last < 0 or not has_loss[last] else float(loss[last]),
        min_val_loss=min_loss,
        seconds=math.fsum(np.where(np.isnan(seconds), 0.0, seconds).tolist()),
        epochs_to_target=reached,
        diverged_at=diverged_at,
        reason=reason,
        early_stopped=early_stopped,
    )


# --- per-epoch statistics of replicate groups ------------------------------------------------------------------


@dataclass
class EpochColumns:
    """A group's per-epoch statistics: epochs (E,), runs with each epoch (E,), and a (E,) mean and std per field."""

    epoch: np.ndarray
    n: np.ndarray
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]


def epoch_stats(groups: Sequence[Sequence[Curve]]) -> list[EpochColumns]:
    """analysis._epoch_stats for each group of curves: over the runs that have each epoch (the union, in order),
    the mean and sample standard deviation of each field's finite values. All groups' columns go through
    lrlab.reports.exact at once."""
    layouts = []
    blocks = []  # (runs, epochs * fields) per group
    for curves in groups:
        epochs = np.unique(np.concatenate([c.epoch for c in curves])) if curves else np.zeros(0, dtype=np.int64)
        values = np.full((len(curves), len(epochs), len(CURVE_FIELDS)), np.nan)
        present = np.zeros((len(curves), len(epochs)), dtype=bool)
        for r, c in enumerate(curves):
            at = np.searchsorted(epochs, c.epoch)
            present[r, at] = True
            for k, f in enumerate(CURVE_FIELDS):
                values[r, at, k] = c.columns[f]
        layouts.append((epochs, present.sum(axis=0)))
        blocks.append(values.reshape(len(curves), -1))
    rows = max((b.shape[0] for b in blocks), default=0)
    width = sum(b.shape[1] for b in blocks)
    stacked = np.full((rows, width), np.nan)
    col = 0
    for b in blocks:
        stacked[: b.shape[0], col : col + b.shape[1]] = b
        col += b.shape[1]
    means, stds = exact.fmeans(stacked), exact.stdevs(stacked)
    out, col = [], 0
    for (epochs, n), b in zip(layouts, blocks, strict=True):
        m = means[col : col + b.shape[1]].reshape(len(epochs), len(CURVE_FIELDS))
        s = stds[col : col + b.shape[1]].reshape(len(epochs), len(CURVE_FIELDS))
        col += b.shape[1]
        out.append(
            EpochColumns(
                epochs,
                n,
                {f: m[:, k] for k, f in enumerate(CURVE_FIELDS)},
                {f: s[:, k] for k, f in enumerate(CURVE_FIELDS)},
            )
        )
    return out


# --- downsampling ----------------------------------------------------------------------------------------------


def _spread(candidates: np.ndarray, k: int) -> np.ndarray:
    """analysis._spread: k candidates, one from the middle of each of k equal bins."""
    if k <= 0:
        return candidates[:0]
    if k >= len(candidates):
        return candidates
    width = len(candidates) / k
    picks = [math.floor((j + 0.5) * width) for j in range(k)]
    return candidates[picks]


def _extreme(column: np.ndarray, mode: str) -> int | None:
    """analysis._extreme_index: the earliest best finite value's row."""
    finite = ~np.isnan(column)
    if not finite.any():
        return None
    best = np.max(column[finite]) if mode == "max" else np.min(column[finite])
    return _first_at(np.where(finite, column, -np.inf if mode == "max" else np.inf), float(best))


def downsample_rows(curve: Curve, max_points: int) -> tuple[np.ndarray, SamplingInfo]:
    """The rows analysis.downsample keeps of this curve's points, in order, and the same SamplingInfo."""
    if max_points < 2:
        raise ValueError(f"Invalid max_points: {max_points} (at least 2)")
    n = len(curve)
    if n <= max_points:
        return np.arange(n), SamplingInfo(sampled=False, method=None, n_raw=n, n_returned=n)
    nonfinite = np.flatnonzero(curve.flagged())
    priority = [
        0,
        n - 1,
        *nonfinite[:1].tolist(),
        _extreme(curve.columns["val_accuracy"], "max"),
        _extreme(curve.columns["val_loss"], "min"),
    ]
    keep: list[int] = []
    for i in priority:
        if i is not None and i not in keep and len(keep) < max_points:
            keep.append(i)
    kept = np.zeros(n, dtype=bool)
    kept[keep] = True
    more = _spread(nonfinite[~kept[nonfinite]], max_points - len(keep))
    kept[more] = True
    rest = _spread(np.flatnonzero(~kept), max_points - len(keep) - len(more))
    kept[rest] = True
    chosen = np.flatnonzero(kept)
    return chosen, SamplingInfo(sampled=True, method="uniform+extrema", n_raw=n, n_returned=len(chosen))
