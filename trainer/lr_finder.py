"""The learning-rate range test (Smith 2015): sweep the lr up exponentially, watch the loss, suggest an lr."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.loop import resolve_device
from trainer.models import build_model, count_parameters
from trainer.optim import build_optimizer

logger = logging.getLogger(__name__)

MAX_LR_LIMIT = 1000.0
MIN_STEPS, MAX_STEPS = 10, 10_000
SKIP_FRACTION = 0.1  # the first 10% of the sweep: lrs too small to move the loss, slopes are noise
MIN_USABLE_POINTS = 5  # fewer points than this between the skipped head and the minimum: no suggestion
STOP_CHECK_FROM = 5  # the explosion test starts once a few points exist (the first smoothed loss is the minimum)
STOP_POLL_EVERY = 10  # steps between calls to should_stop


@dataclass
class LrPoint:
    step: int  # 0-based
    lr: float  # the lr of this step's update
    loss: float | None  # the batch loss before the update; None when NaN/inf (JSON has no NaN)
    smoothed_loss: float | None  # bias-corrected EMA of the losses; None when the loss was NaN/inf


@dataclass
class LrFinderResult:
    points: list[LrPoint]
    suggested_lr: float | None
    rule: str  # how suggested_lr was chosen, or why there is none
    stopped_early: bool  # the loss exploded before max_lr: the normal end of a range test
    reason: str | None  # why the sweep ended before max_lr (explosion or a stop request)
    suggested_grid: list[float]  # lrs around the suggestion for a follow-up grid; empty without a suggestion
    seconds: float
    n_parameters: int


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


def suggest_lr(points: list[LrPoint], steps: int) -> tuple[float | None, str]:
    """The lr of steepest descent of the smoothed loss against log10(lr), between the noisy head and the minimum."""
    usable = [p for p in points if p.smoothed_loss is not None]
    skip = math.ceil(SKIP_FRACTION * steps)
    if not usable:
        return None, "no suggestion: no point has a finite loss"
    smoothed = np.array([p.smoothed_loss for p in usable], dtype=np.float64)  # (P,)
    log_lr = np.log10(np.array([p.lr for p in usable], dtype=np.float64))  # (P,)
    steps_of = np.array([p.step for p in usable])  # (P,)
    best = int(np.argmin(smoothed))  # past it the loss climbs: the divergent tail
    window = np.flatnonzero((steps_of >= skip) & (np.arange(len(usable)) <= best))  # (W,) indices into usable
    excluded = f"excluding the first {skip} steps ({SKIP_FRACTION:.0%}) and the divergent tail after the minimum"
    if len(window) < MIN_USABLE_POINTS:
        return None, (
            f"no suggestion: {len(window)} usable points after the first {skip} steps and up to the loss minimum"
            f" at lr {usable[best].lr:.3g} (need {MIN_USABLE_POINTS}); the loss rose too early or the sweep was cut"
            " short: lower min_lr or add steps"
        )
    # central differences inside the window, one-sided at its ends; the lrs are evenly spaced in log10
    slope = np.gradient(smoothed[window], log_lr[window])  # (W,) d loss / d log10 lr
    steepest = int(np.argmin(slope))
    if slope[steepest] >= 0:
        return None, f"no suggestion: the smoothed loss never decreases ({excluded})"
    rule = f"steepest descent of the smoothed loss (d loss / d log10 lr), {excluded}"
    return float(usable[window[steepest]].lr), rule


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

    # data, model and optimizer as train() builds them, so the sweep starts where a run would
    data = load_dataset(config.dataset, config.data_seed, data_root)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)  # (N, *input_shape), (N,)
    n_train = len(y_train)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.input_shape, data.n_classes).to(device)
    model.train()
    optimizer = build_optimizer(model.parameters(), replace(config.optimizer, lr=min_lr))
    n_parameters = count_parameters(model)
    order = torch.Generator().manual_seed(config.seed)

    points: list[LrPoint] = []
    avg, best = 0.0, math.inf
    stopped_early, reason = False, None
    perm = torch.randperm(n_train, generator=order).to(device)  # (N,)
    start = 0
    for i in range(steps):
        if should_stop is not None and i > 0 and i % STOP_POLL_EVERY == 0 and should_stop():
            reason = "stopped on request"
            logger.info("lr range test stopped on request after %d steps", i)
            break
        if start >= n_train:  # the epoch is used up: a fresh permutation, as train() draws one per epoch
            perm, start = torch.randperm(n_train, generator=order).to(device), 0
        idx = perm[start : start + config.batch_size]  # (B,)
        start += config.batch_size
        lr = sweep_lr(min_lr, max_lr, i, steps)
        optimizer.lr = lr

        logits = model(x_train[idx])  # (B, K)
        loss = F.cross_entropy(logits, y_train[idx])
        value = loss.item()
        smoothed: float | None = None
        if math.isfinite(value):
            # EMA started at 0, so divide by 1 - beta^(i+1) to undo its pull towards 0 early on
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (i + 1))  # finite: a float32 loss is at most ~3.4e38
        point = LrPoint(step=i, lr=lr, loss=value if math.isfinite(value) else None, smoothed_loss=smoothed)
        points.append(point)
        if on_point is not None:
            on_point(point)

        if smoothed is None:
            stopped_early, reason = True, f"loss became {value} at lr {lr:.3g}"
        else:
            best = min(best, smoothed)
            if i + 1 >= STOP_CHECK_FROM and smoothed > stop_factor * best:
                stopped_early = True
                reason = f"smoothed loss {smoothed:.3g} > {stop_factor:g} x minimum {best:.3g} at lr {lr:.3g}"
        if stopped_early:
            logger.info("lr range test: %s (step %d)", reason, i)
            break  # no update from an exploded loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    suggested, rule = suggest_lr(points, steps)
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
        stopped_early=stopped_early,
        reason=reason,
        suggested_grid=grid,
        seconds=seconds,
        n_parameters=n_parameters,
    )
