"""The learning-rate range test (Smith 2015): sweep the lr up exponentially, watch the loss, suggest lrs."""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import RunConfig
from trainer.setup import RunSetup, resolve_device, set_up

logger = logging.getLogger(__name__)

MAX_LR_LIMIT = 1000.0
MIN_STEPS, MAX_STEPS = 10, 10_000
SKIP_FRACTION = 0.1  # the first 10% of the sweep: lrs too small to move the loss, slopes are noise
MIN_USABLE_POINTS = 5  # fewer points than this between the skipped head and the minimum: no suggestion
STOP_CHECK_FROM = 5  # the explosion test starts once a few points exist (the first smoothed loss is the minimum)
STOP_POLL_EVERY = 10  # steps between calls to should_stop
STOPPED_ON_REQUEST = "stopped on request"  # LrFinderResult.reason of a sweep should_stop ended


@dataclass
class LrPoint:
    step: int  # 0-based
    lr: float  # the lr of this step's update
    loss: float | None  # the batch loss before the update; None when NaN/inf (JSON has no NaN)
    smoothed_loss: float | None  # bias-corrected EMA of the losses; None when the loss was NaN/inf


@dataclass
class LrSuggestion:
    name: str  # "valley" | "steepest" | "minimum"
    lr: float | None  # None when the sweep gave the rule nothing to stand on (rule says why)
    rule: str  # how lr was chosen, or why there is none


@dataclass
class LrFinderResult:
    points: list[LrPoint]
    suggested_lr: float | None  # the default rule's lr (DEFAULT_SUGGESTION)
    rule: str  # how suggested_lr was chosen, or why there is none
    stopped_early: bool  # the loss exploded before max_lr: the normal end of a range test
    reason: str | None  # why the sweep ended before max_lr (explosion or a stop request)
    suggested_grid: list[float]  # lrs around the suggestion for a follow-up grid; empty without a suggestion
    seconds: float
    n_parameters: int
    suggestions: list[LrSuggestion]  # every rule's pick, the default first


def sweep_lr(min_lr: float, max_lr: float, step: int, steps: int) -> float:
    """Exponential sweep: min_lr at step 0, max_lr at step steps - 1, a constant ratio in between."""
    return min_lr * (max_lr / min_lr) ** (step / (steps - 1))


def _validate(min_lr: float, max_lr: float, steps: int, smoothing: float, stop_factor: float) -> None:
    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not (number(min_lr) and min_lr > 0):
        raise ValueError(f"Invalid min_lr: {min_lr!r} (need a number > 0)")
    if not (number(max_lr) and min_lr < max_lr <= MAX_LR_LIMIT):
        raise ValueError(f"Invalid max_lr: {max_lr!r} (need min_lr = {min_lr} < max_lr <= {MAX_LR_LIMIT:g})")
    if isinstance(steps, bool) or not isinstance(steps, int) or not MIN_STEPS <= steps <= MAX_STEPS:
        raise ValueError(f"Invalid steps: {steps!r} (need an integer in [{MIN_STEPS}, {MAX_STEPS}])")
    if not (number(smoothing) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"Invalid smoothing: {smoothing!r} (need 0 <= smoothing < 1)")
    if not (number(stop_factor) and stop_factor > 1.0):
        raise ValueError(f"Invalid stop_factor: {stop_factor!r} (need a number > 1)")


def _round_sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits}g}")


def suggest_grid(lr: float, min_lr: float, max_lr: float) -> list[float]:
    """[lr/10, lr/3, lr, 3 lr] to 2 significant digits, clipped to [min_lr, max_lr], sorted and unique."""
    values = {min(max(_round_sig(lr * f), min_lr), max_lr) for f in (0.1, 1 / 3, 1.0, 3.0)}
    return sorted(values)


@dataclass
class _Curve:
    """The smoothed curve the rules read: points past the skipped head, up to the smoothed loss's minimum."""

    lrs: np.ndarray  # (W,)
    smoothed: np.ndarray  # (W,)
    min_lr: float  # the lr of the minimum, the window's last point
    skip: int  # steps skipped at the head
    problem: str | None  # why there is nothing to suggest from, or None


def _curve(points: list[LrPoint], steps: int) -> _Curve:
    usable = [p for p in points if p.smoothed_loss is not None]
    skip = math.ceil(SKIP_FRACTION * steps)
    empty = np.zeros(0)
    if not usable:
        return _Curve(empty, empty, math.nan, skip, "no point has a finite loss")
    best = min(range(len(usable)), key=lambda i: usable[i].smoothed_loss)  # type: ignore[arg-type,return-value]
    window = [p for p in usable[: best + 1] if p.step >= skip]  # past the minimum the loss climbs: the tail
    lrs = np.array([p.lr for p in window], dtype=np.float64)
    smoothed = np.array([p.smoothed_loss for p in window], dtype=np.float64)
    problem = None
    if len(window) < MIN_USABLE_POINTS:
        problem = (
            f"{len(window)} usable points after the first {skip} steps and up to the loss minimum at lr"
            f" {usable[best].lr:.3g} (need {MIN_USABLE_POINTS}); the loss rose too early or the sweep was cut"
            " short: lower min_lr or add steps"
        )
    return _Curve(lrs, smoothed, usable[best].lr, skip, problem)


def _excluded(curve: _Curve) -> str:
    return f"the first {curve.skip} steps ({SKIP_FRACTION:.0%}) and the divergent tail after the minimum excluded"


def suggest_valley(curve: _Curve) -> LrSuggestion:
    """fastai's "valley", written afresh: the middle of the longest falling stretch of the smoothed loss.

    The stretch is measured by the longest strictly decreasing subsequence of the smoothed losses (it may skip
    points where noise pushes the loss up): it ends at its last point, and is as many steps wide as it has
    points; the suggestion is the lr halfway along it. Because the stretch reaches back from the bottom of the
    descent into its gentle start, its middle sits well below the steepest point.
    """
    if curve.problem is not None:
        return LrSuggestion("valley", None, f"no suggestion: {curve.problem}")
    # longest strictly decreasing subsequence ending at each point, by patience sorting on -loss:
    # tails[k] is the largest last loss of a decreasing subsequence of length k + 1 seen so far (as -loss)
    tails: list[float] = []
    length = np.zeros(len(curve.smoothed), dtype=np.int64)  # (W,)
    for i, value in enumerate(-curve.smoothed):
        k = bisect.bisect_left(tails, value)
        tails[k : k + 1] = [value]
        length[i] = k + 1
    end = int(np.argmax(length))  # the first point where the longest stretch ends
    width = int(length[end])
    if width < MIN_USABLE_POINTS:
        return LrSuggestion(
            "valley", None, f"no suggestion: the smoothed loss never falls for {MIN_USABLE_POINTS} steps"
        )
    middle = end - width + 1 + width // 2
    lr = float(curve.lrs[middle])
    rule = (
        f"valley: halfway along the longest falling stretch of the smoothed loss ({width} steps, lr"
        f" {curve.lrs[end - width + 1]:.3g} to {curve.lrs[end]:.3g}); {_excluded(curve)}"
    )
    return LrSuggestion("valley", lr, rule)


def suggest_steepest(curve: _Curve) -> LrSuggestion:
    """The lr where the smoothed loss falls fastest against log10(lr): Smith's and torch-lr-finder's pick."""
    if curve.problem is not None:
        return LrSuggestion("steepest", None, f"no suggestion: {curve.problem}")
    # central differences inside the window, one-sided at its ends; the lrs are evenly spaced in log10
    slope = np.gradient(curve.smoothed, np.log10(curve.lrs))  # (W,) d loss / d log10 lr
    steepest = int(np.argmin(slope))
    if slope[steepest] >= 0:
        return LrSuggestion("steepest", None, f"no suggestion: the smoothed loss never decreases ({_excluded(curve)})")
    rule = f"steepest: steepest descent of the smoothed loss (d loss / d log10 lr); {_excluded(curve)}"
    return LrSuggestion("steepest", float(curve.lrs[steepest]), rule)


def suggest_minimum(curve: _Curve) -> LrSuggestion:
    """A tenth of the lr at the smoothed loss's minimum: just short of where the loss starts to climb."""
    if curve.problem is not None:
        return LrSuggestion("minimum", None, f"no suggestion: {curve.problem}")
    rule = f"minimum: a tenth of the lr of the smoothed loss's minimum ({curve.min_lr:.3g}); {_excluded(curve)}"
    return LrSuggestion("minimum", curve.min_lr / 10, rule)


RULES: dict[str, Callable[[_Curve], LrSuggestion]] = {
    "valley": suggest_valley,
    "steepest": suggest_steepest,
    "minimum": suggest_minimum,
}
DEFAULT_SUGGESTION = "minimum"  # the most reliable in bench/lr_finder_rules.py (docs/lr-finder.md)


def suggest_lrs(points: list[LrPoint], steps: int) -> list[LrSuggestion]:
    """Every rule's suggestion, DEFAULT_SUGGESTION first."""
    curve = _curve(points, steps)
    order = [DEFAULT_SUGGESTION] + [name for name in RULES if name != DEFAULT_SUGGESTION]
    return [RULES[name](curve) for name in order]


def lr_range_test(
    config: RunConfig,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.98,
    stop_factor: float = 4.0,
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    on_point: Callable[[LrPoint], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LrFinderResult:
    """Train one model for `steps` steps with the lr rising from min_lr to max_lr; config.optimizer.lr is ignored."""
    t_run = time.perf_counter()
    _validate(min_lr, max_lr, steps, smoothing, stop_factor)
    device = resolve_device(device) if isinstance(device, str) else device
    run = set_up(config, device, data_root, lr=min_lr)  # as train() starts, so the sweep starts where a run would
    sweep = _Sweep(min_lr, max_lr, steps, smoothing, stop_factor)
    points, reason = sweep.run(run, config.batch_size, on_point, should_stop)

    suggestions = suggest_lrs(points, steps)
    suggested, rule = suggestions[0].lr, suggestions[0].rule
    grid = suggest_grid(suggested, min_lr, max_lr) if suggested is not None else []
    seconds = time.perf_counter() - t_run
    logger.info(
        "lr range test: %d points up to lr %.3g, suggested lr %s (%.2fs)",
        len(points),
        points[-1].lr if points else min_lr,
        f"{suggested:.3g}" if suggested is not None else "none",
        seconds,
    )
    return LrFinderResult(
        points=points,
        suggested_lr=suggested,
        rule=rule,
        stopped_early=sweep.exploded,
        reason=reason,
        suggested_grid=grid,
        seconds=seconds,
        n_parameters=run.n_parameters,
        suggestions=suggestions,
    )


@dataclass
class _Sweep:
    """The sweep's steps: an exponentially rising lr, the smoothed loss, and the explosion that ends it."""

    min_lr: float
    max_lr: float
    steps: int
    smoothing: float
    stop_factor: float
    exploded: bool = False  # the loss exploded before max_lr: the normal end of a range test

    def run(
        self,
        run: RunSetup,
        batch_size: int,
        on_point: Callable[[LrPoint], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[list[LrPoint], str | None]:
        """The points, and why the sweep ended before max_lr (an explosion or a stop request) or None."""
        model, optimizer, x_train, y_train = run.model, run.optimizer, run.data.x_train, run.data.y_train
        device, n_train = x_train.device, len(y_train)
        model.train()
        points: list[LrPoint] = []
        avg, best = 0.0, math.inf
        perm = torch.randperm(n_train, generator=run.order).to(device)  # (N,)
        start = 0
        for i in range(self.steps):
            if should_stop is not None and i > 0 and i % STOP_POLL_EVERY == 0 and should_stop():
                logger.info("lr range test stopped on request after %d steps", i)
                return points, STOPPED_ON_REQUEST
            if start >= n_train:  # the epoch is used up: a fresh permutation, as train() draws one per epoch
                perm, start = torch.randperm(n_train, generator=run.order).to(device), 0
            idx = perm[start : start + batch_size]  # (B,)
            start += batch_size
            lr = sweep_lr(self.min_lr, self.max_lr, i, self.steps)
            optimizer.lr = lr

            logits = model(x_train[idx])  # (B, C)
            loss = F.cross_entropy(logits, y_train[idx])
            value = loss.item()
            smoothed: float | None = None
            if math.isfinite(value):
                # EMA started at 0, so divide by 1 - beta^(i+1) to undo its pull towards 0 early on
                avg = self.smoothing * avg + (1 - self.smoothing) * value
                smoothed = avg / (1 - self.smoothing ** (i + 1))  # finite: a float32 loss is at most ~3.4e38
            point = LrPoint(step=i, lr=lr, loss=value if math.isfinite(value) else None, smoothed_loss=smoothed)
            points.append(point)
            if on_point is not None:
                on_point(point)

            reason = None
            if smoothed is None:
                reason = f"loss became {value} at lr {lr:.3g}"
            else:
                best = min(best, smoothed)
                if i + 1 >= STOP_CHECK_FROM and smoothed > self.stop_factor * best:
                    reason = f"smoothed loss {smoothed:.3g} > {self.stop_factor:g} x minimum {best:.3g} at lr {lr:.3g}"
            if reason is not None:
                self.exploded = True
                logger.info("lr range test: %s (step %d)", reason, i)
                return points, reason  # no update from an exploded loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return points, None
