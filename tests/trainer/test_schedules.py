"""Every schedule's exact per-epoch lr sequence, torch's lr_scheduler as the reference, warmup and validation."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainer.config import ScheduleConfig
from trainer.schedules import lr_at


def sequence(schedule: ScheduleConfig, base_lr: float, epochs: int) -> list[float]:
    return [lr_at(schedule, base_lr, epoch, epochs) for epoch in range(1, epochs + 1)]


def torch_sequence(make: Callable[[torch.optim.Optimizer], Any], base_lr: float, epochs: int) -> list[float]:
    """The lr each epoch trains at under torch: read it, train, then scheduler.step() once per epoch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_at_constant() -> None:
    assert sequence(ScheduleConfig(), 0.3, 4) == [0.3] * 4


def test_lr_at_multistep_article_example() -> None:
    # lr 0.1, milestones [1, 2], gamma 0.1: epochs 1, 2, 3 train at 0.1, 0.01, 0.001
    lrs = sequence(ScheduleConfig("multistep", {"milestones": [1, 2], "gamma": 0.1}), 0.1, 3)
    assert lrs == pytest.approx([0.1, 0.01, 0.001], rel=1e-12)


def test_lr_at_multistep_article_schedule() -> None:
    # the article: 1000 epochs, 0.1 until epoch 400, 0.01 until 700, then 0.001
    lrs = sequence(ScheduleConfig("multistep", {"milestones": [400, 700]}), 0.1, 1000)
    assert lrs[:400] == [0.1] * 400
    assert lrs[400:700] == pytest.approx([0.01] * 300, rel=1e-12)
    assert lrs[700:] == pytest.approx([0.001] * 300, rel=1e-12)
    assert (lrs[399], lrs[400], lrs[699], lrs[700]) == pytest.approx((0.1, 0.01, 0.01, 0.001), rel=1e-12)


def test_lr_at_piecewise() -> None:
    schedule = ScheduleConfig("piecewise", {"boundaries": [2, 5], "values": [0.5, 0.05, 0.005]})
    assert sequence(schedule, 123.0, 7) == [0.5, 0.5, 0.05, 0.05, 0.05, 0.005, 0.005]


@pytest.mark.parametrize(
    ("schedule", "make"),
    [
        (
            ScheduleConfig("step", {"step_size": 3, "gamma": 0.5}),
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        ),
        (ScheduleConfig("step", {"step_size": 2}), lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2)),
        (
            ScheduleConfig("multistep", {"milestones": [2, 3, 7], "gamma": 0.3}),
            lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 3, 7], gamma=0.3),
        ),
        (
            ScheduleConfig("exponential", {"gamma": 0.8}),
            lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8),
        ),
        (
            ScheduleConfig("cosine", {"t_max": 9, "eta_min": 0.01}),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=9, eta_min=0.01),
        ),
        (ScheduleConfig("cosine"), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10)),
    ],
    ids=["step", "step-default-gamma", "multistep", "exponential", "cosine", "cosine-default-t_max"],
)
def test_lr_at_matches_torch_scheduler(schedule: ScheduleConfig, make: Callable[[Any], Any]) -> None:
    assert sequence(schedule, 0.2, 10) == pytest.approx(torch_sequence(make, 0.2, 10), rel=1e-9, abs=1e-15)


def test_lr_at_cosine_past_t_max_matches_torch() -> None:
    # past t_max torch's CosineAnnealingLR climbs back (0.0122 in epoch 12 here) and repeats every 2 t_max
    schedule = ScheduleConfig("cosine", {"t_max": 10, "eta_min": 0.01})
    make = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=10, eta_min=0.01)
    lrs = sequence(schedule, 0.1, 65)
    assert lrs == pytest.approx(torch_sequence(make, 0.1, 65), rel=1e-9)
    assert lrs[11] == pytest.approx(0.0122, abs=1e-4) and lrs[20] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.01)


@pytest.mark.parametrize("warmup", [2, 3])
def test_lr_at_warmup_cosine_past_t_max_matches_torch(warmup: int) -> None:
    # warmup w: torch's LinearLR from 1/w to 1 over w epochs, then CosineAnnealingLR from its own epoch 0
    def make(o: torch.optim.Optimizer) -> Any:
        ramp = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.01)
        return torch.optim.lr_scheduler.SequentialLR(o, [ramp, cosine], milestones=[warmup])

    schedule = ScheduleConfig("cosine", {"t_max": 4, "eta_min": 0.01}, warmup_epochs=warmup)
    assert sequence(schedule, 0.1, 40) == pytest.approx(torch_sequence(make, 0.1, 40), rel=1e-9)


def test_lr_at_warmup_ramps_then_runs_schedule() -> None:
    schedule = ScheduleConfig("multistep", {"milestones": [2], "gamma": 0.1}, warmup_epochs=4)
    lrs = sequence(schedule, 0.4, 8)
    # epochs 1-4 ramp to the schedule's first lr; the schedule then starts over at its own epoch 1
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.04, 0.04], rel=1e-12)


def test_lr_at_warmup_cosine_spans_remaining_epochs() -> None:
    lrs = sequence(ScheduleConfig("cosine", warmup_epochs=2), 1.0, 6)  # t_max = 6 - 2
    expected = [0.5, 1.0] + [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (ScheduleConfig("linear"), "Unknown schedule: 'linear'"),
        (ScheduleConfig("step", {"step_size": 0}), "Invalid step_size: 0"),
        (ScheduleConfig("step", {"step_size": 2, "gamma": 0}), "Invalid gamma: 0"),
        (ScheduleConfig("step", {"step_size": 2, "gama": 0.5}), "Unknown parameter for schedule 'step'"),
        (ScheduleConfig("multistep", {"milestones": [5, 3]}), r"Invalid milestones: \[5, 3\]"),
        (ScheduleConfig("multistep", {"milestones": [2, 2]}), r"Invalid milestones: \[2, 2\]"),
        (ScheduleConfig("exponential", {"gamma": -0.5}), "Invalid gamma: -0.5"),
        (ScheduleConfig("exponential"), "Missing schedule parameter: gamma"),
        (ScheduleConfig("piecewise", {"boundaries": [3], "values": [0.1]}), r"Invalid values: \[0.1\]"),
        (ScheduleConfig("piecewise", {"boundaries": [3], "values": [0.1, -1.0]}), "Invalid values"),
        (ScheduleConfig("cosine", {"t_max": 0}), "Invalid t_max: 0"),
        (ScheduleConfig("cosine", {"eta_min": -0.1}), "Invalid eta_min: -0.1"),
        (ScheduleConfig(warmup_epochs=-1), "Invalid warmup_epochs: -1"),
    ],
)
def test_lr_at_rejects_invalid_schedule(schedule: ScheduleConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lr_at(schedule, 0.1, 1, 10)


def test_lr_at_rejects_epoch_zero() -> None:
    with pytest.raises(ValueError, match="Invalid epoch: 0"):
        lr_at(ScheduleConfig(), 0.1, 0, 10)
