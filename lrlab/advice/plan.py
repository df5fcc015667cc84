"""The advice's method, pure: the lrs a range test leads to, who goes on after the search, who wins, in what words.

1. Range tests: one per optimizer (RANGE_TEST: the sweep docs/lr-finder.md found best read by its default rule,
   a tenth of the lr at the smoothed loss's minimum). Its suggestion is the centre of that optimizer's lrs; a
   test that failed or suggested nothing leaves the optimizer's own default lr as the centre, and says so.
2. Search: every optimizer at LR_FACTORS x its centre (a 100x span), one seed, under successive halving
   (grace GRACE_EPOCHS, reduction factor REDUCTION_FACTOR) when the budget leaves a rung to judge at.
3. Replicates: the best lr of each of the FINALISTS best optimizers (a run that diverged is never a finalist),
   over every seed at full budget; the other schedules on the search's best configuration.
4. Verdict: the best mean over seeds wins; the runner-up is the best configuration of another optimizer (another
   lr when there is no other); a t-interval on their difference (lrlab.reports.analysis.verdict).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from lrlab.schemas.advice import AdviceVerdict
from lrlab.schemas.compare import ReplicateGroup, Verdict
from lrlab.schemas.search import EarlyStopping
from lrlab.schemas.spec import MAX_LR, OPTIMIZER_SCHEMAS, SCHEDULE_SCHEMAS

LR_FACTORS = (0.1, 1 / 3, 1.0, 3.0, 10.0)
FINALISTS = 3
RANGE_TEST: dict[str, Any] = {"min_lr": 1e-5, "max_lr": 10.0, "steps": 100}
GRACE_EPOCHS, REDUCTION_FACTOR = 1, 3
METRIC = "best_val_accuracy"
# trainer.config.DatasetConfig.val_fraction's default (tests/lrlab/advice/test_plan.py holds the two equal):
# a range test's steps are counted as epochs of the training split.
VAL_FRACTION = 0.2
# Statuses whose runs say nothing usable about their configuration; a diverged run is usable in statistics
# (its best accuracy stands) but never chosen as a finalist.
UNUSABLE = ("failed", "cancelled")


# --- labels -------------------------------------------------------------------------------------


def lr_text(lr: float) -> str:
    """3e-3, 1.2e-2, 1, 12: short and unambiguous."""
    if 1 <= lr < 1000:
        return f"{lr:.3g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    power = int(exponent)
    return mantissa if power == 0 else f"{mantissa}e{power}"


def _short(model: BaseModel, key: str, schemas: dict[str, type[BaseModel]], skip: set[str]) -> str:
    """`sgd(momentum=0.9)`: the name and the fields that differ from that schema's defaults."""
    name = getattr(model, key)
    reference = schemas[name].model_construct()  # the schema's defaults (a field without one: always shown)
    parts = []
    for field in type(model).model_fields:
        if field in skip or field == key:
            continue
        value = getattr(model, field)
        if getattr(reference, field, None) == value:
            continue
        parts.append(f"{field}={value:g}" if isinstance(value, float) else f"{field}={value}")
    return f"{name}({', '.join(parts)})" if parts else str(name)


def optimizer_label(optimizer: BaseModel) -> str:
    return _short(optimizer, "name", OPTIMIZER_SCHEMAS, skip={"lr"})


def schedule_label(schedule: BaseModel) -> str:
    return _short(schedule, "kind", SCHEDULE_SCHEMAS, skip=set())


def config_label(optimizer: BaseModel, lr: float, schedule: str | None = None) -> str:
    """`adam 3e-3`, or `adam 3e-3 cosine` for a schedule other than the advice's first."""
    return f"{optimizer_label(optimizer)} {lr_text(lr)}" + (f" {schedule}" if schedule else "")


# --- stage 1 -> 2: the lrs around each suggestion ----------------------------------------------------


def round_lr(lr: float) -> float:
    return float(f"{lr:.2g}")


def center(status: str, result: dict[str, Any] | None, error: str | None, default_lr: float) -> tuple[float, str]:
    """The lr a range test leads the search to centre on, and where it came from."""
    suggested = (result or {}).get("suggested_lr")
    if status == "succeeded" and isinstance(suggested, float | int) and math.isfinite(suggested) and suggested > 0:
        return float(suggested), f"the range test's suggestion ({(result or {}).get('rule') or 'default rule'})"
    if status == "succeeded":
        why = (result or {}).get("rule") or "no suggestion"
        return default_lr, f"the optimizer's default lr: the range test gave no suggestion ({why})"
    reason = f": {error}" if error else ""
    return default_lr, f"the optimizer's default lr: the range test {status}{reason}"


def search_lrs(center_lr: float) -> list[float]:
    """LR_FACTORS around the centre, to 2 significant digits, within the run spec's bounds, distinct, ascending."""
    return sorted({min(round_lr(center_lr * f), MAX_LR) for f in LR_FACTORS if center_lr * f > 0})


def early_stopping(epochs: int) -> EarlyStopping | None:
    """Successive halving for the search; None when its first rung would be the last epoch (nothing to judge)."""
    if epochs <= GRACE_EPOCHS:
        return None
    return EarlyStopping(grace_epochs=GRACE_EPOCHS, reduction_factor=REDUCTION_FACTOR)


# --- stage 2 -> 3: the finalists ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tried:
    """One run of the search, as the ranking sees it."""

    run_id: str
    key: str  # the optimizer's settings without lr (schemas.advice.settings_key)
    label: str
    lr: float
    status: str
    epochs: int  # epochs it trained
    best: float | None  # its best val accuracy


def tried_label(run: Tried) -> str:
    """`adam 3e-3`: as config_label names the same configuration in the replicates."""
    return f"{run.label} {lr_text(run.lr)}"


def reached(run: Tried, budget: int) -> int:
    """How far a run went: a run stopped by successive halving reached the rung it stopped at; any other finished
    run (patience's early stop included) went as far as the budget let it."""
    return min(run.epochs, budget) if run.status == "stopped" else budget


def rank(runs: Sequence[Tried], budget: int) -> list[Tried]:
    """Best first: the runs that went furthest, by best val accuracy; the unusable, diverged and scoreless last."""

    def key(run: Tried) -> tuple[int, int, float]:
        usable = run.status not in (*UNUSABLE, "diverged") and run.best is not None and math.isfinite(run.best)
        if not usable:
            return 1, 0, 0.0
        return 0, -reached(run, budget), -(run.best or 0.0)

    return sorted(runs, key=key)  # stable: ties keep the search's order


def finalists(ranked: Sequence[Tried], budget: int, count: int = FINALISTS) -> list[Tried]:
    """The best lr of each of the `count` best optimizers, in `ranked`'s order; with a single optimizer, its two
    best lrs (a verdict needs two). Only runs that trained and did not diverge."""
    usable = [r for r in ranked if r.status not in (*UNUSABLE, "diverged") and r.best is not None]
    usable = [r for r in usable if math.isfinite(r.best or 0.0)]
    chosen: list[Tried] = []
    for run in usable:
        if len(chosen) < count and run.key not in {c.key for c in chosen}:
            chosen.append(run)
    for run in usable:
        if len(chosen) < min(count, 2) and run not in chosen:
            chosen.append(run)
    return chosen


# --- stage 3 -> 4: the winner, the runner-up and the verdict -----------------------------------------------


@dataclass(frozen=True)
class Contender:
    """A configuration of stage 3: its replicates' statistics and what it is."""

    group: ReplicateGroup
    key: str  # optimizer settings without lr
    lr: float


def decide(contenders: Sequence[Contender]) -> tuple[Contender | None, Contender | None]:
    """(winner, runner-up): the best mean, and the best of another optimizer, else of another lr, else any other."""
    ranked = sorted(
        (c for c in contenders if c.group.mean is not None), key=lambda c: -(c.group.mean or 0.0)
    )  # stable: ties keep the order given
    if not ranked:
        return None, None
    winner = ranked[0]
    others = ranked[1:]
    runner_up = next((c for c in others if c.key != winner.key), None)
    runner_up = runner_up or next((c for c in others if c.lr != winner.lr), None)
    return winner, runner_up or (others[0] if others else None)


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def statement(verdict: Verdict) -> str:
    """The verdict in one sentence a person can act on."""
    better, other = verdict.better, verdict.other
    n = min(verdict.n_better, verdict.n_other)
    if verdict.method is None or verdict.difference is None:
        why = verdict.note or "not enough replicates"
        return f"{better} and {other} cannot be told apart: {why}."
    seeds = f"{verdict.n_pairs} paired seeds" if verdict.n_pairs else f"{n}+ seeds each"
    low, high = _signed(verdict.ci_low or 0.0), _signed(verdict.ci_high or 0.0)
    interval = f"{verdict.confidence:.0%} interval {low} to {high}"
    if verdict.significant:
        return (
            f"{better} beats {other}: {_signed(verdict.difference)} best validation accuracy on average over"
            f" {seeds} ({interval})."
        )
    return (
        f"{better} and {other} are indistinguishable here: {better} is ahead by {verdict.difference:.3f} in best"
        f" validation accuracy on average over {seeds}, but the {interval} includes 0."
    )


def advice_verdict(verdict: Verdict) -> AdviceVerdict:
    return AdviceVerdict(**verdict.model_dump(), statement=statement(verdict))


# --- compute ------------------------------------------------------------------------------------


def range_test_epochs(steps_taken: int, batch_size: int, n_samples: int) -> float:
    """A range test's steps as epochs of the training split (each step is one batch)."""
    n_train = max(n_samples - max(round(n_samples * VAL_FRACTION), 1), 1)
    return steps_taken * batch_size / n_train


def full_grid_epochs(candidates: int, extra_schedules: int, seeds: int, epochs: int) -> int:
    """Every configuration the advice considered, each over every seed at full budget."""
    return (candidates + extra_schedules) * seeds * epochs
