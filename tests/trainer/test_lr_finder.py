"""The lr range test: the sweep, its explosion stop, the suggestion rule, callbacks, validation and usefulness."""

from __future__ import annotations

import functools
import math

import pytest

from trainer.config import OptimizerConfig, RunConfig
from trainer.loop import train
from trainer.lr_finder import LrFinderResult, LrPoint, lr_range_test, suggest_grid, suggest_lr

MIN_LR, MAX_LR, STEPS = 1e-5, 10.0, 100
# Adam's lr bounds its step size, so past ~0.1 the ReLUs die and the loss plateaus near ln 10 instead of
# exploding; with the default 0.98 EMA (a ~50-step memory) the smoothed loss then often never reaches
# 4 x its minimum within 100 steps. A shorter memory sees the climb.
SMOOTHING = {"sgd": 0.98, "adam": 0.9}
# Seen on digits + default MLP over seeds 0-5: sgd 0.70-1.07, adam 0.0061-0.012 (stopped early every time).
BANDS = {"sgd": (0.3, 3.0), "adam": (2e-3, 3e-2)}


@functools.cache
def sweep(name: str) -> LrFinderResult:
    """One 100-step sweep per optimizer, shared by the tests that only read it."""
    config = RunConfig(optimizer=OptimizerConfig(name))
    return lr_range_test(config, min_lr=MIN_LR, max_lr=MAX_LR, steps=STEPS, smoothing=SMOOTHING[name])


@pytest.fixture(params=["sgd", "adam"])
def digits_sweep(request: pytest.FixtureRequest) -> tuple[str, LrFinderResult]:
    return request.param, sweep(request.param)


def test_lr_range_test_digits_suggests_lr_in_band(digits_sweep: tuple[str, LrFinderResult]) -> None:
    name, result = digits_sweep
    low, high = BANDS[name]
    assert result.suggested_lr is not None and MIN_LR < result.suggested_lr < MAX_LR
    assert low <= result.suggested_lr <= high, result.suggested_lr
    assert result.rule.startswith("steepest descent")
    assert result.n_parameters == 26122 and result.seconds > 0
    # the suggestion is a swept lr, past the skipped head and before the smoothed loss's minimum
    steps = {p.lr: p.step for p in result.points}
    smoothed = [p.smoothed_loss for p in result.points if p.smoothed_loss is not None]
    assert STEPS // 10 <= steps[result.suggested_lr] <= smoothed.index(min(smoothed))


def test_lr_range_test_digits_stops_when_loss_explodes(digits_sweep: tuple[str, LrFinderResult]) -> None:
    _, result = digits_sweep
    points = result.points
    assert result.stopped_early and result.reason is not None and len(points) < STEPS
    last = points[-1]
    assert last.smoothed_loss is not None
    best = min(p.smoothed_loss for p in points if p.smoothed_loss is not None)
    assert last.smoothed_loss > 4 * best
    assert result.reason.startswith("smoothed loss") and f"at lr {last.lr:.3g}" in result.reason
    # it stopped at the first point over the line, not later
    running = math.inf
    for p in points[:-1]:
        assert p.smoothed_loss is not None
        running = min(running, p.smoothed_loss)
        assert p.smoothed_loss <= 4 * running or p.step < 4


def test_lr_range_test_digits_sweeps_geometrically(digits_sweep: tuple[str, LrFinderResult]) -> None:
    _, result = digits_sweep
    lrs = [p.lr for p in result.points]
    assert [p.step for p in result.points] == list(range(len(lrs)))
    assert lrs[0] == pytest.approx(MIN_LR)
    ratio = (MAX_LR / MIN_LR) ** (1 / (STEPS - 1))
    assert all(b / a == pytest.approx(ratio) for a, b in zip(lrs, lrs[1:], strict=False))


def test_lr_range_test_digits_grid_surrounds_suggestion(digits_sweep: tuple[str, LrFinderResult]) -> None:
    _, result = digits_sweep
    s, grid = result.suggested_lr, result.suggested_grid
    assert s is not None
    assert grid == sorted(set(grid)) and len(grid) == 4
    assert float(f"{s:.2g}") in grid
    assert grid[0] == pytest.approx(s / 10, rel=0.06) and grid[-1] == pytest.approx(3 * s, rel=0.06)


def test_lr_range_test_is_deterministic() -> None:
    def run(seed: int) -> LrFinderResult:
        return lr_range_test(RunConfig(seed=seed), min_lr=1e-4, max_lr=1.0, steps=30)

    first, second = run(0), run(0)
    assert first.points == second.points and first.suggested_lr == second.suggested_lr
    assert run(1).points != first.points  # the seed matters: the comparison above is not vacuous


def test_lr_range_test_ignores_config_lr() -> None:
    # an lr that build_optimizer would refuse: the sweep sets its own
    config = RunConfig(optimizer=OptimizerConfig("sgd", lr=-1.0))
    result = lr_range_test(config, min_lr=1e-3, max_lr=1e-1, steps=12)
    assert len(result.points) == 12 and result.points[-1].lr == pytest.approx(1e-1)
    assert not result.stopped_early and result.reason is None


def test_lr_range_test_on_point_sees_every_point() -> None:
    seen: list[LrPoint] = []
    result = lr_range_test(RunConfig(), min_lr=1e-4, max_lr=1e-2, steps=25, on_point=seen.append)
    assert seen == result.points and len(seen) == 25


def test_lr_range_test_should_stop_ends_sweep() -> None:
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) == 2

    result = lr_range_test(RunConfig(), min_lr=1e-4, max_lr=1e-2, steps=100, should_stop=should_stop)
    assert len(calls) == 2 and len(result.points) == 20
    assert not result.stopped_early and result.reason == "stopped on request"


def test_lr_range_test_non_finite_loss_is_none() -> None:
    # no smoothed-loss stop (factor 1e30) and no smoothing: plain SGD at lr ~100 overflows to nan/inf
    config = RunConfig(optimizer=OptimizerConfig("sgd"))
    result = lr_range_test(config, min_lr=1e-2, max_lr=1000.0, steps=30, smoothing=0.0, stop_factor=1e30)
    last = result.points[-1]
    assert result.stopped_early and last.loss is None and last.smoothed_loss is None
    assert result.reason is not None and result.reason.startswith("loss became")
    assert all(p.loss is not None and p.smoothed_loss == p.loss for p in result.points[:-1])  # smoothing 0


def test_lr_range_test_too_early_explosion_gives_no_suggestion() -> None:
    config = RunConfig(optimizer=OptimizerConfig("sgd"))
    result = lr_range_test(config, min_lr=3.0, max_lr=1000.0, steps=20)
    assert result.stopped_early
    assert result.suggested_lr is None and result.suggested_grid == []
    assert result.rule.startswith("no suggestion") and "need 5" in result.rule


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lr": 0.0}, "Invalid min_lr: 0.0"),
        ({"min_lr": float("nan")}, "Invalid min_lr: nan"),
        ({"min_lr": 1.0, "max_lr": 1.0}, "Invalid max_lr: 1.0"),
        ({"max_lr": 2000.0}, "Invalid max_lr: 2000.0"),
        ({"steps": 9}, "Invalid steps: 9"),
        ({"steps": 10_001}, "Invalid steps: 10001"),
        ({"steps": 50.0}, "Invalid steps: 50.0"),
        ({"smoothing": 1.0}, "Invalid smoothing: 1.0"),
        ({"smoothing": -0.1}, "Invalid smoothing: -0.1"),
        ({"stop_factor": 1.0}, "Invalid stop_factor: 1.0"),
        ({"stop_factor": True}, "Invalid stop_factor: True"),
    ],
)
def test_lr_range_test_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lr_range_test(RunConfig(), **kwargs)  # type: ignore[arg-type]


def synthetic(smoothed: list[float], min_lr: float = 1e-4, max_lr: float = 1.0) -> list[LrPoint]:
    steps = len(smoothed)
    lrs = [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]
    return [LrPoint(i, lr, loss, loss) for i, (lr, loss) in enumerate(zip(lrs, smoothed, strict=True))]


def test_suggest_lr_picks_steepest_descent_between_head_and_minimum() -> None:
    # 41 points over 4 decades (0.1 decade apart); a sigmoid drop centred at step 20 (lr 1e-2) that
    # bottoms out at step 30, then a climb with a steeper plunge (step 36) in the tail; a fake plunge
    # at step 1 lies in the skipped head
    curve = [2.0 - math.tanh((i - 20) / 3) for i in range(31)] + [1.5, 3.0, 6.0, 9.0, 12.0, 2.0, 9.0, 12.0, 15.0, 20.0]
    curve[0], curve[1] = 50.0, 3.0
    lr, rule = suggest_lr(synthetic(curve), steps=41)
    assert lr == pytest.approx(1e-2) and rule.startswith("steepest descent")


def test_suggest_lr_flat_loss_gives_no_suggestion() -> None:
    lr, rule = suggest_lr(synthetic([2.0] * 30), steps=30)
    assert lr is None and rule.startswith("no suggestion")


def test_suggest_grid_rounds_and_clips() -> None:
    assert suggest_grid(0.0123, 1e-5, 10.0) == [0.0012, 0.0041, 0.012, 0.037]
    assert suggest_grid(2e-5, 1e-5, 10.0) == [1e-5, 2e-5, 6e-5]  # 2e-6 and 6.7e-6 clip to min_lr
    assert suggest_grid(5.0, 1e-5, 10.0) == [0.5, 1.7, 5.0, 10.0]  # 15 clips to max_lr


def test_suggested_lr_trains_digits_with_adam() -> None:
    result = sweep("adam")
    assert result.suggested_lr is not None
    good = train(RunConfig(optimizer=OptimizerConfig("adam", result.suggested_lr), epochs=3))
    assert good.status == "succeeded" and good.points[-1].val_accuracy >= 0.8
    # the lr where the sweep blew up does not train: the suggestion is not any lr from the sweep
    bad = train(RunConfig(optimizer=OptimizerConfig("adam", result.points[-1].lr), epochs=3))
    assert bad.status == "diverged" or bad.points[-1].val_accuracy < 0.5
