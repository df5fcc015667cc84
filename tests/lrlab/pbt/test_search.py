"""The PBT policy in plain Python: quantiles, ranking, exploit and explore, and the schedule a member followed."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from lrlab.pbt.search import (
    Mutation,
    Segment,
    exploit_and_explore,
    followed,
    in_force,
    initial,
    mutation,
    quantile_size,
    rank,
)

LR = Mutation("log_uniform", 1e-4, 1.0)
MOMENTUM = Mutation("uniform", 0.5, 0.99)
WIDTHS = Mutation("choices", choices=(16, 32, 64, 128))


def explore(
    scores: list[float | None],
    hyperparameters: list[dict[str, Any]],
    mutations: dict[str, Mutation],
    **overrides: Any,
) -> Any:
    kwargs: dict[str, Any] = {
        "quantile": 0.25,
        "mode": "max",
        "factors": (0.8, 1.2),
        "resample_probability": 0.25,
        "seed": 0,
        "epoch": 2,
    }
    kwargs.update(overrides)
    return exploit_and_explore(scores, hyperparameters, mutations, **kwargs)


def population(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return initial({"lr": LR, "momentum": MOMENTUM}, n, seed)


# --- quantiles and ranking -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "quantile", "expected"),
    [
        (8, 0.25, 2),
        (10, 0.25, 3),  # ceil(2.5)
        (9, 0.1, 1),  # ceil(0.9)
        (4, 0.5, 2),
        (5, 0.5, 2),  # ceil(2.5) = 3 would overlap the top and bottom: capped at 5 // 2
        (3, 0.4, 1),  # ceil(1.2) = 2, capped at 1
        (2, 0.01, 1),
        (1, 0.5, 0),
    ],
)
def test_quantile_size_rounds_up_and_caps_at_half(size: int, quantile: float, expected: int) -> None:
    assert quantile_size(size, quantile) == expected


def test_rank_orders_best_first_for_max_and_min() -> None:
    scores: list[float | None] = [0.5, 0.9, 0.1, 0.7]
    assert rank(scores, "max") == [1, 3, 0, 2]
    assert rank(scores, "min") == [2, 0, 3, 1]


def test_rank_puts_missing_and_non_finite_last_and_breaks_ties_by_index() -> None:
    scores: list[float | None] = [None, 0.5, math.nan, 0.5, math.inf, 0.7, -math.inf]
    assert rank(scores, "max") == [5, 1, 3, 0, 2, 4, 6]
    assert rank(scores, "min") == [1, 3, 5, 0, 2, 4, 6]


# --- exploit ------------------------------------------------------------------------------------------


def test_exploit_bottom_quantile_copies_a_top_member() -> None:
    scores: list[float | None] = [0.30, 0.95, 0.10, 0.80, 0.55, 0.20, 0.60, 0.90]  # top 1, 7; bottom 2, 5
    hps = population(8)
    sources = set()
    for epoch in range(2, 42, 2):
        replaced = explore(scores, hps, {"lr": LR, "momentum": MOMENTUM}, epoch=epoch)
        assert [r.target for r in replaced] == [2, 5]
        assert all(r.source in (1, 7) for r in replaced)
        assert all(r.old == hps[r.target] for r in replaced)
        sources |= {r.source for r in replaced}
    assert sources == {1, 7}  # the source is drawn from the whole top quantile, not always the best


def test_exploit_with_min_mode_replaces_the_highest_scores() -> None:
    scores: list[float | None] = [0.30, 0.95, 0.10, 0.80]  # losses: best 2, worst 1
    replaced = explore(scores, population(4), {"lr": LR}, mode="min")
    assert [(r.target, r.source) for r in replaced] == [(1, 2)]


def test_exploit_never_copies_a_member_without_a_finite_score() -> None:
    # three of four members diverged: the top half holds member 0 and a NaN; only member 0 may be copied
    scores: list[float | None] = [0.9, None, math.nan, None]
    for epoch in range(2, 62, 2):
        replaced = explore(scores, population(4), {"lr": LR}, quantile=0.5, epoch=epoch)
        assert [r.target for r in replaced] == [2, 3]
        assert {r.source for r in replaced} == {0}, epoch
    assert explore([None, math.nan, None, math.inf], population(4), {"lr": LR}, quantile=0.5) == []


def test_exploit_copies_the_sources_other_hyperparameters() -> None:
    hps = [{"lr": 0.01, "momentum": 0.9, "tag": f"m{k}"} for k in range(4)]
    (r,) = explore([0.1, 0.2, 0.9, 0.5], hps, {"lr": LR})
    assert (r.target, r.source) == (0, 2)
    assert r.new["tag"] == "m2" and r.new["momentum"] == 0.9
    assert r.old == {"lr": 0.01, "momentum": 0.9, "tag": "m0"}
    assert hps[0]["tag"] == "m0"  # the inputs are left alone


def test_small_population_is_left_alone() -> None:
    assert explore([0.5], population(1), {"lr": LR}, quantile=0.5) == []


# --- explore ------------------------------------------------------------------------------------------


def test_explore_without_resampling_multiplies_the_sources_value_by_a_factor() -> None:
    scores: list[float | None] = [k / 10 for k in range(8)]
    hps = population(8, seed=3)
    factors = (0.8, 1.2)
    seen = set()
    for epoch in range(2, 22, 2):
        for r in explore(scores, hps, {"lr": LR, "momentum": MOMENTUM}, resample_probability=0, epoch=epoch):
            assert r.resampled == ()
            for name, space in (("lr", LR), ("momentum", MOMENTUM)):
                source = hps[r.source][name]
                candidates = [space.clip(source * f) for f in factors]
                match = [f for f, c in zip(factors, candidates, strict=True) if math.isclose(r.new[name], c)]
                assert match, (name, source, r.new[name])
                seen.add(match[0])
    assert seen == set(factors)


def test_explore_clips_to_the_bounds_where_ray_would_step_outside() -> None:
    lr = Mutation("log_uniform", 1e-3, 1.0)
    momentum = Mutation("uniform", 0.5, 0.95)
    hps = [{"lr": 0.9, "momentum": 0.9}, {"lr": 1.1e-3, "momentum": 0.55}, {"lr": 0.1, "momentum": 0.7}]
    up = explore([0.9, 0.5, 0.1], hps, {"lr": lr, "momentum": momentum}, factors=(1.2,), resample_probability=0)
    down = explore([0.5, 0.9, 0.1], hps, {"lr": lr, "momentum": momentum}, factors=(0.8,), resample_probability=0)
    assert [(r.target, r.source) for r in up + down] == [(2, 0), (2, 1)]
    assert 0.9 * 1.2 > 1.0 and 0.9 * 1.2 > 0.95  # Ray Tune would hand out 1.08 for both
    assert up[0].new == {"lr": 1.0, "momentum": 0.95}
    assert 1.1e-3 * 0.8 < 1e-3 and 0.55 * 0.8 < 0.5
    assert down[0].new == {"lr": 1e-3, "momentum": 0.5}


def test_explore_never_leaves_the_bounds_over_many_rounds() -> None:
    # Ray-style factors far from 1 and members pushed round after round: every value stays in [low, high]
    lr, momentum = Mutation("log_uniform", 1e-3, 0.3), Mutation("uniform", 0.8, 0.99)
    mutations = {"lr": lr, "momentum": momentum, "width": WIDTHS}
    hps = initial(mutations, 8, seed=11)
    rng = random.Random(5)
    edges = 0
    for epoch in range(1, 201):
        scores: list[float | None] = [rng.random() for _ in hps]
        for r in explore(scores, hps, mutations, factors=(0.3, 3.0), resample_probability=0.1, epoch=epoch):
            hps[r.target] = r.new
            edges += r.new["lr"] in (lr.low, lr.high) or r.new["momentum"] in (momentum.low, momentum.high)
        for values in hps:
            assert lr.low <= values["lr"] <= lr.high
            assert momentum.low <= values["momentum"] <= momentum.high
            assert values["width"] in WIDTHS.choices
    assert edges > 10  # the bounds were hit: clipping happened, round after round


def test_explore_with_resampling_draws_fresh_values_inside_the_bounds() -> None:
    scores: list[float | None] = [k / 10 for k in range(8)]
    hps = population(8, seed=1)
    mutations = {"lr": LR, "momentum": MOMENTUM}
    # factor 1: a perturbed value would equal the source's; a resampled one does not
    kept = explore(scores, hps, mutations, factors=(1.0,), resample_probability=0)
    assert all(r.new == {n: hps[r.source][n] for n in mutations} for r in kept)
    drawn = explore(scores, hps, mutations, factors=(1.0,), resample_probability=1)
    assert len(drawn) == 2
    for r in drawn:
        assert r.resampled == ("lr", "momentum")
        assert LR.low <= r.new["lr"] <= LR.high and MOMENTUM.low <= r.new["momentum"] <= MOMENTUM.high
        assert r.new["lr"] != hps[r.source]["lr"] and r.new["momentum"] != hps[r.source]["momentum"]


def test_explore_resamples_at_about_the_requested_rate() -> None:
    scores: list[float | None] = [k / 32 for k in range(32)]
    hps = initial({"lr": LR}, 32, seed=0)
    drawn = total = 0
    for epoch in range(1, 101):
        for r in explore(scores, hps, {"lr": LR}, resample_probability=0.25, epoch=epoch):
            drawn += r.resampled == ("lr",)
            total += 1
    assert total == 800 and 0.19 < drawn / total < 0.31


def test_perturb_choices_moves_to_a_neighbour_or_stays_at_the_edge() -> None:
    outcomes: dict[int, set[int]] = {16: set(), 32: set(), 64: set(), 128: set()}
    for seed in range(200):
        for value in outcomes:
            outcomes[value].add(WIDTHS.perturb(value, random.Random(seed), (0.8, 1.2)))
    assert outcomes == {16: {16, 32}, 32: {16, 64}, 64: {32, 128}, 128: {64, 128}}


def test_explore_perturbs_choices_to_a_neighbour_of_the_sources_value() -> None:
    hps = [{"width": w} for w in (16, 32, 64, 128)]
    for epoch in range(1, 31):
        (r,) = explore([0.1, 0.2, 0.9, 0.5], hps, {"width": WIDTHS}, resample_probability=0, epoch=epoch)
        assert r.source == 2 and r.new["width"] in (32, 128)


def test_perturb_log_uniform_is_multiplicative() -> None:
    for value in (1e-4 * 1.5, 3e-3, 0.05, 0.5):
        for factor in (0.5, 0.8, 1.2, 1.9):
            got = LR.perturb(value, random.Random(0), (factor,))
            assert math.isclose(got, min(max(value * factor, LR.low), LR.high), rel_tol=1e-12)
    # a step of the same factor is the same distance in log space, wherever the value sits
    small, large = LR.perturb(2e-4, random.Random(0), (1.2,)), LR.perturb(0.2, random.Random(0), (1.2,))
    assert math.isclose(math.log(small / 2e-4), math.log(large / 0.2), rel_tol=1e-9)


# --- determinism and the initial population ----------------------------------------------------------


def test_same_seed_and_epoch_give_the_same_round_and_another_epoch_other_draws() -> None:
    scores: list[float | None] = [k / 16 for k in range(16)]
    hps = population(16)
    mutations = {"lr": LR, "momentum": MOMENTUM}
    first = explore(scores, hps, mutations, seed=4, epoch=6)
    assert explore(scores, hps, mutations, seed=4, epoch=6) == first
    assert explore(scores, hps, mutations, seed=4, epoch=8) != first
    assert explore(scores, hps, mutations, seed=5, epoch=6) != first
    # the draws differ, not only the sources: the explored values of the same target
    later = explore(scores, hps, mutations, seed=4, epoch=8)
    assert [r.new["lr"] for r in later] != [r.new["lr"] for r in first]


def test_initial_is_deterministic_per_seed_and_inside_the_bounds() -> None:
    mutations = {"lr": LR, "momentum": MOMENTUM, "width": WIDTHS}
    a = initial(mutations, 200, seed=7)
    assert a == initial(mutations, 200, seed=7)
    assert a != initial(mutations, 200, seed=8)
    assert len({v["lr"] for v in a}) == 200
    for values in a:
        assert LR.low <= values["lr"] <= LR.high
        assert MOMENTUM.low <= values["momentum"] <= MOMENTUM.high
        assert values["width"] in WIDTHS.choices
    # log-uniform: about half the draws below the geometric middle 1e-2 (a uniform draw puts ~1% there)
    assert 0.35 < sum(v["lr"] < 1e-2 for v in a) / len(a) < 0.65
    assert {v["width"] for v in a} == set(WIDTHS.choices)


def test_mutation_reads_the_request_forms() -> None:
    assert mutation({"log_uniform": [1e-4, 1]}) == Mutation("log_uniform", 1e-4, 1.0)
    assert mutation({"uniform": (0.8, 0.99)}) == Mutation("uniform", 0.8, 0.99)
    assert mutation({"choices": [0.1, 0.01]}) == Mutation("choices", choices=(0.1, 0.01))


# --- the schedule a member followed ------------------------------------------------------------------


def test_in_force_gives_the_members_own_values_per_epoch() -> None:
    history = [Segment(1, {"lr": 0.1}), Segment(3, {"lr": 0.5}, source=2), Segment(5, {"lr": 0.4}, source=1)]
    assert in_force(history, 6) == [{"lr": 0.1}] * 2 + [{"lr": 0.5}] * 2 + [{"lr": 0.4}] * 2
    assert in_force(history, 3) == [{"lr": 0.1}, {"lr": 0.1}, {"lr": 0.5}]
    assert in_force(history, 0) == []


def test_followed_walks_inherited_history_through_two_exploits() -> None:
    # 6 epochs, rounds after 2 and 4: member 1 copies member 0 after epoch 2; after epoch 4 member 2 copies
    # member 1, whose weights were themselves member 0's up to epoch 2
    histories = [
        [Segment(1, {"lr": 0.1})],
        [Segment(1, {"lr": 0.01}), Segment(3, {"lr": 0.12}, source=0)],
        [Segment(1, {"lr": 0.001}), Segment(5, {"lr": 0.144}, source=1)],
    ]
    assert followed(histories, 2, 6) == [
        (0, {"lr": 0.1}),
        (0, {"lr": 0.1}),
        (1, {"lr": 0.12}),
        (1, {"lr": 0.12}),
        (2, {"lr": 0.144}),
        (2, {"lr": 0.144}),
    ]
    assert followed(histories, 1, 6) == [(0, {"lr": 0.1})] * 2 + [(1, {"lr": 0.12})] * 4
    assert followed(histories, 0, 6) == [(0, {"lr": 0.1})] * 6
    # read at epoch 4, before member 2's exploit took effect: its own history only
    assert followed(histories, 2, 4) == [(2, {"lr": 0.001})] * 4


def test_followed_returns_to_a_member_whose_later_history_must_not_leak_in() -> None:
    # 8 epochs: after 2, member 1 <- 0; after 4, members 0 and 2 <- 1; after 6, member 1 <- 2
    histories = [
        [Segment(1, {"lr": 0.1}), Segment(5, {"lr": 0.2}, source=1)],
        [Segment(1, {"lr": 0.01}), Segment(3, {"lr": 0.12}, source=0), Segment(7, {"lr": 0.3}, source=2)],
        [Segment(1, {"lr": 0.001}), Segment(5, {"lr": 0.15}, source=1)],
    ]
    assert [who for who, _ in followed(histories, 1, 8)] == [0, 0, 1, 1, 2, 2, 1, 1]
    assert [v["lr"] for _, v in followed(histories, 1, 8)] == [0.1, 0.1, 0.12, 0.12, 0.15, 0.15, 0.3, 0.3]
    assert [v["lr"] for _, v in followed(histories, 0, 8)] == [0.1, 0.1, 0.12, 0.12, 0.2, 0.2, 0.2, 0.2]
    assert [v["lr"] for _, v in followed(histories, 2, 8)] == [0.1, 0.1, 0.12, 0.12, 0.15, 0.15, 0.15, 0.15]
