"""The advice's method, pure: the lrs around a suggestion, the ranking and the finalists, the winner and the
runner-up, the verdict in words, the compute."""

from __future__ import annotations

import math

import pytest

from lrlab.advice import plan
from lrlab.reports import analysis
from lrlab.schemas.advice import AdviceCreate
from lrlab.schemas.compare import ReplicateGroup
from lrlab.schemas.spec import MAX_LR, AdamSpec, CosineSchedule, SgdSpec


def test_lr_text_is_short_and_exact_to_two_digits() -> None:
    assert [plan.lr_text(v) for v in (3e-3, 0.0316, 1e-5, 1.0, 12.0, 0.1)] == [
        "3e-3",
        "3.16e-2",
        "1e-5",
        "1",
        "12",
        "1e-1",
    ]


def test_search_lrs_span_a_hundredfold_around_the_centre() -> None:
    lrs = plan.search_lrs(3.13e-3)
    assert lrs == [0.00031, 0.001, 0.0031, 0.0094, 0.031]
    assert lrs[-1] / lrs[0] >= 30
    assert max(plan.search_lrs(500.0)) == MAX_LR  # never past the run spec's bound


def test_center_is_the_suggestion_else_the_default_and_says_why() -> None:
    lr, source = plan.center("succeeded", {"suggested_lr": 0.004, "rule": "a tenth of the minimum"}, None, 1e-3)
    assert lr == 0.004 and "suggestion" in source
    lr, source = plan.center("succeeded", {"suggested_lr": None, "rule": "too few points"}, None, 1e-3)
    assert lr == 1e-3 and "too few points" in source
    lr, source = plan.center("failed", None, "ValueError: boom", 0.01)
    assert lr == 0.01 and "failed: ValueError: boom" in source
    lr, _ = plan.center("succeeded", {"suggested_lr": math.nan}, None, 0.5)
    assert lr == 0.5


def test_early_stopping_needs_a_rung_before_the_last_epoch() -> None:
    assert plan.early_stopping(1) is None
    stopping = plan.early_stopping(2)
    assert stopping is not None and (stopping.grace_epochs, stopping.reduction_factor) == (1, 3)


def tried(
    run_id: str, key: str, lr: float, best: float | None, status: str = "succeeded", epochs: int = 9
) -> plan.Tried:
    return plan.Tried(run_id, key, key, lr, status, epochs, best)


def test_rank_puts_runs_that_went_further_first_and_never_picks_a_diverged_finalist() -> None:
    runs = [
        tried("a1", "adam", 1e-3, 0.90),
        tried("a2", "adam", 1e-2, 0.97, status="stopped", epochs=3),  # high early, stopped at a rung
        tried("s1", "sgd", 0.1, 0.95),
        tried("s2", "sgd", 1.0, 0.99, status="diverged", epochs=4),
        tried("r1", "rmsprop", 1e-3, 0.93),
        tried("r2", "rmsprop", 1e-2, None, status="failed", epochs=0),
        tried("g1", "adagrad", 1e-2, 0.91),
    ]
    ranked = plan.rank(runs, budget=9)
    assert [r.run_id for r in ranked] == ["s1", "r1", "g1", "a1", "a2", "s2", "r2"]
    assert [r.run_id for r in plan.finalists(ranked, budget=9)] == ["s1", "r1", "g1"]
    assert [r.run_id for r in plan.finalists(ranked, budget=9, count=5)] == ["s1", "r1", "g1", "a1"]


def test_patience_stopped_runs_count_as_full_budget() -> None:
    ranked = plan.rank([tried("a", "adam", 1e-3, 0.9, epochs=4), tried("b", "adam", 1e-2, 0.95, epochs=9)], 9)
    assert [r.run_id for r in ranked] == ["b", "a"]  # succeeded at epoch 4 by patience: judged on its accuracy


def test_a_single_optimizer_sends_its_two_best_lrs_to_the_replicates() -> None:
    runs = [tried("a", "adam", 1e-3, 0.9), tried("b", "adam", 3e-3, 0.95), tried("c", "adam", 1e-2, 0.8)]
    assert [r.run_id for r in plan.finalists(plan.rank(runs, 9), 9)] == ["b", "a"]


def group(label: str, values: list[float | None], seeds: list[int] | None = None) -> ReplicateGroup:
    usable = [v for v in values if v is not None]
    return ReplicateGroup(
        label=label,
        run_ids=[f"{label}-{k}" for k in range(len(values))],
        seeds=seeds or list(range(len(values))),
        n=len(values),
        metric_values=values,
        mean=sum(usable) / len(usable) if usable else None,
        std=None,
    )


def test_runner_up_is_the_best_of_another_optimizer() -> None:
    adam = plan.Contender(group("adam 3e-3", [0.97, 0.96, 0.98]), "adam", 3e-3)
    adam_cosine = plan.Contender(group("adam 3e-3 cosine", [0.975, 0.965, 0.98]), "adam", 3e-3)
    adam_low = plan.Contender(group("adam 1e-3", [0.96, 0.96, 0.97]), "adam", 1e-3)
    sgd = plan.Contender(group("sgd 1e-1", [0.95, 0.96, 0.96]), "sgd", 0.1)
    winner, runner_up = plan.decide([adam, adam_cosine, adam_low, sgd])
    assert winner is adam_cosine and runner_up is sgd
    winner, runner_up = plan.decide([adam, adam_low])  # one optimizer: another lr
    assert winner is adam and runner_up is adam_low
    assert plan.decide([plan.Contender(group("x", [None]), "x", 1.0)]) == (None, None)


def test_statement_says_plainly_when_the_two_cannot_be_told_apart() -> None:
    close = analysis.verdict(
        group("adam 3e-3", [0.970, 0.960, 0.975]), group("rmsprop 1e-3", [0.968, 0.962, 0.970]), "best_val_accuracy"
    )
    assert not close.significant
    text = plan.statement(close)
    assert text.startswith("adam 3e-3 and rmsprop 1e-3 are indistinguishable here: adam 3e-3 is ahead by 0.002")
    assert "95% interval" in text and "includes 0" in text and "3 paired seeds" in text
    far = analysis.verdict(
        group("adam 3e-3", [0.97, 0.96, 0.975]), group("sgd 1e-1", [0.90, 0.895, 0.90]), "best_val_accuracy"
    )
    assert far.significant
    assert plan.statement(far).startswith("adam 3e-3 beats sgd 1e-1: +0.070 best validation accuracy")
    alone = analysis.verdict(group("adam 3e-3", [0.97]), group("sgd 1e-1", [0.9]), "best_val_accuracy")
    assert (
        plan.statement(alone)
        == "adam 3e-3 and sgd 1e-1 cannot be told apart: needs at least 2 seeds per configuration."
    )
    assert plan.advice_verdict(close).statement == text


def test_labels_name_the_settings_that_differ_from_the_defaults() -> None:
    request = AdviceCreate()
    assert [plan.optimizer_label(o) for o in request.optimizers] == [
        "sgd(momentum=0.9)",
        "rmsprop",
        "adam",
        "adagrad",
        "adadelta",
        "adamw",
    ]
    assert plan.config_label(SgdSpec(name="sgd", momentum=0.9, lr=0.05), 0.05) == "sgd(momentum=0.9) 5e-2"
    assert plan.config_label(AdamSpec(name="adam", amsgrad=True), 3e-3, "cosine") == "adam(amsgrad=True) 3e-3 cosine"
    assert plan.schedule_label(CosineSchedule(kind="cosine")) == "cosine"
    assert plan.schedule_label(CosineSchedule(kind="cosine", eta_min=1e-4)) == "cosine(eta_min=0.0001)"


def test_val_fraction_is_the_trainers() -> None:
    from trainer.config import DatasetConfig

    assert DatasetConfig(name="digits").val_fraction == plan.VAL_FRACTION


def test_compute_counts_range_test_steps_as_epochs_of_the_training_split() -> None:
    assert plan.range_test_epochs(100, 64, 1797) == pytest.approx(6400 / 1438)  # 1797 - round(0.2 x 1797)
    assert plan.full_grid_epochs(30, 1, 3, 10) == 930
