"""Divergence: the collapse-to-chance rule on real digits runs, in trainer.train and the fused engine alike."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import torch

from trainer.checkpoint import Checkpoint
from trainer.config import OptimizerConfig, RunConfig, ScheduleConfig
from trainer.divergence import COLLAPSE_EPOCHS, Chance, DivergenceTracker, chance_of
from trainer.epochs import TrainResult
from trainer.loop import train
from trainer.population import train_population


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """SGD at lr 2.0 is chaotic: its path depends on float rounding, which depends on torch's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sgd(lr: float, seed: int, momentum: float = 0.0, **run: object) -> RunConfig:
    params = {"momentum": momentum} if momentum else {}
    return RunConfig(optimizer=OptimizerConfig("sgd", lr, params), epochs=8, seed=seed, **run)  # type: ignore[arg-type]


# one epoch at lr 2.0 (epoch 4) inside an lr 0.1 run
SPIKE = sgd(0.1, 0, schedule=ScheduleConfig("piecewise", {"boundaries": [3, 4], "values": [0.1, 2.0, 0.1]}))


_RUNS: dict[str, TrainResult] = {}


def run(config: RunConfig) -> TrainResult:
    """trainer.train(config), once per config for the tests that only read the result."""
    key = repr(config)  # a RunConfig holds dicts: not hashable, but its repr names it exactly
    if key not in _RUNS:
        _RUNS[key] = train(config)
    return _RUNS[key]


def accuracies(result: TrainResult) -> list[float]:
    return [p.val_accuracy for p in result.points]


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_train_momentum_collapse_to_chance_diverges(seed: int) -> None:
    # SGD momentum 0.9 at lr 0.5 learns in epoch 1 (~.6-.75) and then falls to chance (~.1) for good;
    # the first loss is already at chance, so "factor x the first loss" never sees it
    result = run(sgd(0.5, seed, momentum=0.9))
    assert result.status == "diverged", accuracies(result)
    assert result.reason is not None and result.reason.startswith("collapsed towards chance"), result.reason
    assert result.diverged_at == len(result.points) < 8
    assert max(accuracies(result)) > 0.6 and result.points[-1].val_accuracy < 0.2


def test_train_sgd_lr_2_never_ends_at_chance_as_succeeded() -> None:
    # SGD at lr 2.0 is chaotic: some seeds explode, some collapse to chance, some wobble and keep much of
    # what they learned. Whichever path this machine takes, none may end near chance as "succeeded".
    results = [run(sgd(2.0, seed)) for seed in range(5)]
    for seed, result in enumerate(results):
        assert result.status == "diverged" or result.points[-1].val_accuracy > 0.25, (seed, accuracies(result))
    collapsed = [r for r in results if r.reason is not None and r.reason.startswith("collapsed")]
    assert collapsed, [accuracies(r) for r in results]


@pytest.mark.parametrize("lr", [0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_sgd_large_but_stable_lr_succeeds(lr: float, seed: int) -> None:
    result = run(sgd(lr, seed))
    assert result.status == "succeeded" and result.reason is None
    assert result.points[-1].val_accuracy >= 0.95


def test_train_one_epoch_spike_that_recovers_succeeds() -> None:
    result = run(SPIKE)
    acc = accuracies(result)
    assert [p.lr for p in result.points] == [0.1, 0.1, 0.1, 2.0, 0.1, 0.1, 0.1, 0.1]
    assert acc[3] < acc[2] - 0.1 and acc[3] < acc[4]  # the spike is real, and it recovers
    assert result.status == "succeeded" and acc[-1] > 0.9


def test_train_resumed_after_a_collapsed_epoch_diverges_where_uninterrupted() -> None:
    config = sgd(0.5, 2, momentum=0.9)
    checkpoints: list[Checkpoint] = []
    reference = train(config, on_checkpoint=checkpoints.append)
    assert reference.status == "diverged" and reference.diverged_at is not None
    # the checkpoint after the first collapsed epoch: the resumed run must count that epoch
    last = next(c for c in checkpoints if c.epoch == reference.diverged_at - 1)
    resumed = train(config, start=last)
    assert resumed.status == "diverged"
    assert (resumed.diverged_at, resumed.reason) == (reference.diverged_at, reference.reason)
    assert [replace(p, seconds=0.0) for p in resumed.points] == [replace(p, seconds=0.0) for p in reference.points]


def test_population_applies_the_same_rule_as_train() -> None:
    configs = [sgd(0.5, 2, momentum=0.9), sgd(0.5, 0, momentum=0.9), sgd(1.0, 0), SPIKE]
    fused = train_population(configs)
    assert [r.status for r in fused] == ["diverged", "diverged", "succeeded", "succeeded"]
    for result, config in zip(fused, configs, strict=True):
        reference = run(config)
        assert (result.status, result.diverged_at) == (reference.status, reference.diverged_at)
        assert (result.reason or "")[:25] == (reference.reason or "")[:25]


# --- the collapse rule on given curves --------------------------------------------------------------


@dataclass
class Point:
    val_loss: float
    val_accuracy: float


DIGITS = Chance(loss=math.log(10), accuracy=0.1)


def collapse(curve: list[tuple[float, float]], chance: Chance = DIGITS) -> list[str | None]:
    tracker = DivergenceTracker(4.0, 0.9, chance)
    return [tracker.end_epoch(loss, acc) for loss, acc in curve]


def test_collapse_needs_two_epochs_in_a_row() -> None:
    assert COLLAPSE_EPOCHS == 2
    # learned to .9, one epoch near chance, back to .9, one more near chance: never two in a row
    assert collapse([(0.3, 0.9), (2.3, 0.1), (0.3, 0.9), (2.3, 0.12)]) == [None] * 4
    reasons = collapse([(0.3, 0.9), (2.3, 0.1), (2.25, 0.12)])
    assert reasons[:2] == [None, None] and reasons[2] is not None and "for 2 epochs" in reasons[2]


def test_collapse_needs_accuracy_and_loss_both_lost() -> None:
    # overfitting: val loss climbs far past its best (even past chance), accuracy holds
    assert collapse([(0.2, 0.95), (2.5, 0.9), (3.0, 0.9), (4.0, 0.88)]) == [None] * 4
    # accuracy lost but loss kept more than half its gain (to 0.9 from 2.3: best 0.3)
    assert collapse([(0.3, 0.9), (1.1, 0.4), (1.2, 0.4)]) == [None] * 3
    # both lost: diverged; a NaN val loss counts as lost
    assert collapse([(0.3, 0.9), (1.5, 0.4), (1.5, 0.4)])[-1] is not None
    assert collapse([(0.3, 0.9), (math.nan, 0.1), (math.nan, 0.1)])[-1] is not None


def test_collapse_needs_a_run_that_learned() -> None:
    # a tiny lr: accuracy never gets a tenth of the way from chance to 1, so wobbling near chance is no collapse
    assert collapse([(2.30, 0.12), (2.28, 0.17), (2.31, 0.10), (2.32, 0.09), (2.30, 0.11)]) == [None] * 5


def test_collapse_replay_rebuilds_the_count() -> None:
    tracker = DivergenceTracker(4.0, 0.9, DIGITS)
    tracker.replay([Point(0.3, 0.9), Point(2.3, 0.1)])
    assert tracker.collapsed_epochs == 1 and tracker.best_val_accuracy == 0.9
    assert tracker.end_epoch(2.3, 0.1) is not None


def test_chance_of_imbalanced_labels() -> None:
    chance = chance_of(torch.tensor([0, 0, 0, 1]), 3)  # the third class never occurs
    assert chance.accuracy == 0.75
    assert chance.loss == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
