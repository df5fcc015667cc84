"""Learning-rate schedules as pure functions of the epoch, with torch's lr_scheduler semantics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from trainer.config import ScheduleConfig

# A schedule maps (params, base_lr, e, epochs) to the lr of an epoch, where e counts the epochs
# completed before it (0 for the first): torch's scheduler.step() once per epoch does the same.
Schedule = Callable[[dict[str, Any], float, int, int], float]


def _finite(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"Invalid {key}: {value!r}")
    return float(value)


def _number(params: dict[str, Any], key: str, default: float | None = None) -> float:
    value = params.get(key, default)
    if value is None:
        raise ValueError(f"Missing schedule parameter: {key}")
    return _finite(value, key)


def _gamma(params: dict[str, Any], default: float | None = None) -> float:
    gamma = _number(params, "gamma", default)
    if gamma <= 0:
        raise ValueError(f"Invalid gamma: {gamma}")
    return gamma


def _increasing(params: dict[str, Any], key: str) -> list[int]:
    values = params.get(key)
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"Invalid {key}: {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"Invalid {key}: {values!r} (need non-negative integers)")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"Invalid {key}: {values!r} (need strictly increasing)")
    return list(values)


def _constant(params: dict[str, Any], base: float, e: int, epochs: int) -> float:
    return base


def _step(params: dict[str, Any], base: float, e: int, epochs: int) -> float:
    step_size = params.get("step_size")
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
        raise ValueError(f"Invalid step_size: {step_size!r}")
    return base * _gamma(params, 0.1) ** (e // step_size)


def _multistep(params: dict[str, Any], base: float, e: int, epochs: int) -> float:
    # milestone m takes effect after m completed epochs, i.e. from epoch m + 1 on
    milestones = _increasing(params, "milestones")
    return base * _gamma(params, 0.1) ** sum(m <= e for m in milestones)


def _piecewise(params: dict[str, Any], base: float, e: int, epochs: int) -> float:
    # absolute lrs: values[i] holds from boundary i - 1 to boundary i; the base lr is ignored
    boundaries = _increasing(params, "boundaries")
    values = params.get("values")
    if not isinstance(values, Sequence) or len(values) != len(boundaries) + 1:
        raise ValueError(f"Invalid values: {values!r} (need len(boundaries) + 1 = {len(boundaries) + 1})")
    lrs = [_finite(v, "values") for v in values]
    if any(lr < 0 for lr in lrs):
        raise ValueError(f"Invalid values: {values!r} (need non-negative)")
    return lrs[sum(b <= e for b in boundaries)]


def _exponential(params: dict[str, Any], base: float, e: int, epochs: int) -> float:
    return base * _gamma(params) ** e


def _cosine(params: dict[str, Any], base: float, e: int, epochs: int) -> float:
    t_max = params.get("t_max")
    t_max = max(epochs, 1) if t_max is None else t_max
    if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1:
        raise ValueError(f"Invalid t_max: {t_max!r}")
    eta_min = _number(params, "eta_min", 0.0)
    if eta_min < 0:
        raise ValueError(f"Invalid eta_min: {eta_min}")
    # torch's CosineAnnealingLR: its recursive steps follow this closed form for every e, so past t_max the
    # lr climbs back to base at 2 t_max and repeats with period 2 t_max (it does not hold eta_min)
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2


SCHEDULES: dict[str, Schedule] = {
    "constant": _constant,
    "step": _step,
    "multistep": _multistep,
    "piecewise": _piecewise,
    "exponential": _exponential,
    "cosine": _cosine,
}

SCHEDULE_PARAMS: dict[str, frozenset[str]] = {
    "constant": frozenset(),
    "step": frozenset({"step_size", "gamma"}),
    "multistep": frozenset({"milestones", "gamma"}),
    "piecewise": frozenset({"boundaries", "values"}),
    "exponential": frozenset({"gamma"}),
    "cosine": frozenset({"t_max", "eta_min"}),
}


def lr_at(schedule: ScheduleConfig, base_lr: float, epoch: int, epochs: int) -> float:
    """The lr used during `epoch` (counted from 1) of a run of `epochs` epochs."""
    if schedule.kind not in SCHEDULES:
        raise ValueError(f"Unknown schedule: {schedule.kind!r} (choose from {sorted(SCHEDULES)})")
    unknown = set(schedule.params) - SCHEDULE_PARAMS[schedule.kind]
    if unknown:
        raise ValueError(f"Unknown parameter for schedule {schedule.kind!r}: {sorted(unknown)}")
    warmup = schedule.warmup_epochs
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"Invalid warmup_epochs: {warmup!r}")
    if not (math.isfinite(base_lr) and base_lr >= 0):
        raise ValueError(f"Invalid learning rate: {base_lr}")
    if epoch < 1:
        raise ValueError(f"Invalid epoch: {epoch} (counted from 1)")

    fn = SCHEDULES[schedule.kind]
    # the schedule proper starts after the ramp and lasts the remaining epochs
    remaining = max(epochs - warmup, 1)
    if epoch <= warmup:
        return epoch / warmup * fn(schedule.params, base_lr, 0, remaining)
    return fn(schedule.params, base_lr, epoch - warmup - 1, remaining)


def validate_schedule(schedule: ScheduleConfig, base_lr: float, epochs: int) -> None:
    """Raise ValueError now rather than mid-run: every parameter is checked at the first epoch."""
    lr_at(schedule, base_lr, 1, epochs)
