"""The fused population engine against its reference, K independent trainer.train runs, epoch by epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from trainer import setup
from trainer.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes
from trainer.config import DatasetConfig, DivergenceConfig, ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig
from trainer.data import Dataset, load_dataset
from trainer.epochs import EpochPoint, TrainResult
from trainer.loop import train
from trainer.models import build_model
from trainer.population import (
    StackedOptimizer,
    fusable,
    memory,
    plan_groups,
    train_population,
    why_not_fusable,
)
from trainer.population.functional import FunctionalStack, stack_models
from trainer.population.stack import StackedParameters

SMALL = ModelConfig("mlp", {"hidden": [32, 16]})
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Stacked tensors are big enough for torch to split ops over OpenMP threads, whose spinning on a
    2-core machine shared with other processes made the 16-member test ~10x slower; workers use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def float64(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The reference in float64: weights built under a float64 default, on the same data cast to float64."""
    load = setup.load_dataset

    def load_float64(*args: Any, **kwargs: Any) -> Dataset:
        data = load(*args, **kwargs)  # cached and shared: cast copies, never the cached tensors
        return replace(data, x_train=data.x_train.double(), x_val=data.x_val.double())

    monkeypatch.setattr(setup, "load_dataset", load_float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_same_run(fused: TrainResult, reference: TrainResult, rel: float) -> None:
    assert (fused.status, fused.diverged_at, fused.reason, fused.early_stopped, fused.n_parameters) == (
        reference.status,
        reference.diverged_at,
        reference.reason,
        reference.early_stopped,
        reference.n_parameters,
    )
    assert [(p.epoch, p.lr) for p in fused.points] == [(p.epoch, p.lr) for p in reference.points]
    for ours, theirs in zip(fused.points, reference.points, strict=True):
        for metric in METRICS:
            expected = getattr(theirs, metric)
            assert getattr(ours, metric) == pytest.approx(expected, rel=rel, nan_ok=True), (ours.epoch, metric)


def members(optimizer: str, lrs: list[float], params: list[dict[str, Any]], **run: Any) -> list[RunConfig]:
    """Three members that differ in seed (two share one, so two share a data split), hyperparameters and schedule."""
    schedules = [
        ScheduleConfig(),
        ScheduleConfig("multistep", {"milestones": [1, 2], "gamma": 0.5}, warmup_epochs=1),
        ScheduleConfig("cosine"),
    ]
    return [
        RunConfig(
            model=SMALL,
            optimizer=OptimizerConfig(optimizer, lr, p),
            schedule=schedule,
            epochs=4,
            batch_size=100,  # 1438 training samples: the last batch of each epoch is short
            seed=seed,
            **run,
        )
        for lr, p, schedule, seed in zip(lrs, params, schedules, (3, 7, 7), strict=True)
    ]


OPTIMIZER_CASES = {
    "sgd": members("sgd", [0.05, 0.1, 0.2], [{}, {"weight_decay": 1e-3}, {"weight_decay": 1e-2}]),
    "sgd-momentum-dampening": members(
        "sgd", [0.05, 0.02, 0.1], [{"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.1}, {"momentum": 0.8}]
    ),
    "sgd-nesterov": members(
        "sgd",
        [0.05, 0.02, 0.1],
        [
            {"momentum": 0.9, "nesterov": True},
            {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
            {"momentum": 0.5, "nesterov": True, "weight_decay": 1e-2},
        ],
    ),
    "rmsprop-centered-momentum": members(
        "rmsprop",
        [1e-3, 3e-4, 2e-3],
        [
            {"centered": True, "momentum": 0.9},
            {"centered": True, "momentum": 0.5, "alpha": 0.9, "weight_decay": 1e-3},
            {"centered": True, "momentum": 0.8, "alpha": 0.95, "eps": 1e-6},
        ],
    ),
    "adam-amsgrad": members(
        "adam",
        [1e-3, 3e-3, 1e-2],
        [
            {"amsgrad": True},
            {"amsgrad": True, "betas": [0.8, 0.99], "weight_decay": 1e-3},
            {"amsgrad": True, "betas": [0.95, 0.9], "eps": 1e-6, "weight_decay": 1e-2},
        ],
    ),
    "adamw": members(
        "adamw", [1e-3, 3e-3, 1e-2], [{}, {"weight_decay": 0.1, "betas": [0.8, 0.99]}, {"weight_decay": 0.0}]
    ),
    "adagrad": members(
        "adagrad",
        [1e-2, 3e-2, 5e-3],
        [{}, {"lr_decay": 1e-2, "weight_decay": 1e-3}, {"initial_accumulator_value": 0.1, "eps": 1e-8}],
    ),
    "adadelta": members(
        "adadelta", [1.0, 0.5, 0.1], [{}, {"rho": 0.95, "weight_decay": 1e-3}, {"rho": 0.8, "eps": 1e-5}]
    ),
}


@pytest.mark.parametrize("configs", OPTIMIZER_CASES.values(), ids=OPTIMIZER_CASES.keys())
def test_population_matches_independent_runs_float64(float64: None, configs: list[RunConfig]) -> None:
    fused = train_population(configs, dtype=torch.float64)
    assert len(plan_groups(configs)) == 1
    for result, config in zip(fused, configs, strict=True):
        assert result.status == "succeeded" and len(result.points) == 4
        assert_same_run(result, train(config), rel=1e-6)
    # the members really differ, so matching each its own reference is not matching one curve three times
    assert len({fused[k].points[-1].val_loss for k in range(3)}) == 3


def test_population_masks_diverged_members_float64(float64: None) -> None:
    configs = [
        RunConfig(model=SMALL, optimizer=OptimizerConfig("sgd", lr, {"momentum": 0.9}), epochs=3, seed=seed)
        for lr, seed in [(0.05, 0), (1000.0, 1), (0.02, 2), (1e300, 0)]
    ]
    fused = train_population(configs, dtype=torch.float64)
    references = [train(config) for config in configs]
    assert [r.status for r in fused] == ["succeeded", "diverged", "succeeded", "diverged"]
    assert fused[3].reason is not None and fused[3].reason.startswith("loss became nan at step "), fused[3].reason
    assert fused[1].diverged_at is not None and len(fused[1].points) == fused[1].diverged_at
    for result, reference in zip(fused, references, strict=True):
        assert_same_run(result, reference, rel=1e-6)


def test_population_members_finish_independently_float64(float64: None) -> None:
    """Early stopping, a shorter run and a stop request each end one member; the others go on unchanged."""
    base = RunConfig(model=SMALL, optimizer=OptimizerConfig("adam", 3e-3), epochs=5, batch_size=128)
    configs = [
        base,
        replace(base, optimizer=OptimizerConfig("adam", 0.0), patience=1, seed=1),  # flat val_loss: stops after 2
        replace(base, epochs=2, seed=2),
        replace(base, optimizer=OptimizerConfig("adam", 1e-2), seed=3),  # asked to stop after epoch 3
        replace(base, divergence=DivergenceConfig(enabled=False), seed=4),
    ]
    seen: list[tuple[int, EpochPoint]] = []
    asked: list[int] = []

    def should_stop(k: int) -> bool:
        asked.append(k)
        return k == 3 and asked.count(3) >= 3

    fused = train_population(
        configs, dtype=torch.float64, on_epoch=lambda k, p: seen.append((k, p)), should_stop=should_stop
    )
    assert [(r.status, r.early_stopped, len(r.points)) for r in fused] == [
        ("succeeded", False, 5),
        ("succeeded", True, 2),
        ("succeeded", False, 2),
        ("stopped", False, 3),
        ("succeeded", False, 5),
    ]
    for k, result in enumerate(fused):
        assert [p for i, p in seen if i == k] == result.points
    assert [asked.count(k) for k in range(5)] == [4, 1, 1, 3, 4]  # never after a member's last epoch

    calls: list[int] = []

    def stop_on_third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    for k, config in enumerate(configs):
        reference = train(config, should_stop=stop_on_third_call if k == 3 else None)
        assert_same_run(fused[k], reference, rel=1e-6)


def test_population_float32_sixteen_members_match_separate_runs() -> None:
    optimizers = [
        OptimizerConfig("adam", 3e-3),
        OptimizerConfig("adamw", 1e-3, {"weight_decay": 0.05}),
        OptimizerConfig("rmsprop", 3e-4, {"momentum": 0.5}),
        OptimizerConfig("sgd", 3e-3, {"momentum": 0.9, "nesterov": True}),
    ]
    configs = [
        RunConfig(optimizer=replace(optimizers[k % 4], lr=optimizers[k % 4].lr / (1 + k // 4)), epochs=3, seed=k)
        for k in range(16)
    ]
    assert len(plan_groups(configs)) == 4
    fused = train_population(configs)
    assert torch.get_default_dtype() == torch.float32
    for result, config in zip(fused, configs, strict=True):
        assert_same_run(result, train(config), rel=1e-3)


def test_population_float64_leaves_default_dtype() -> None:
    config = RunConfig(model=SMALL, epochs=1)
    fused = train_population([config], dtype=torch.float64)
    assert torch.get_default_dtype() == torch.float32
    assert fused[0].status == "succeeded" and math.isfinite(fused[0].points[0].val_loss)


def test_plan_groups_splits_by_optimizer_structure_and_batch_size() -> None:
    def run(name: str, batch_size: int = 64, **params: Any) -> RunConfig:
        return RunConfig(optimizer=OptimizerConfig(name, 0.01, params), batch_size=batch_size)

    configs = [
        run("sgd"),
        run("adam"),
        run("sgd", weight_decay=0.1),  # numbers do not split a group
        run("sgd", momentum=0.9),  # a momentum buffer does
        run("sgd", momentum=0.5, nesterov=True),
        run("adam", amsgrad=True),
        run("adam", batch_size=32),
        run("adamw"),
        run("rmsprop", centered=True),
        run("rmsprop"),
        run("sgd", momentum=0.8),
        run("adam", betas=[0.8, 0.9]),
    ]
    assert plan_groups(configs) == [[0, 2], [1, 11], [3, 10], [4], [5], [6], [7], [8], [9]]
    assert plan_groups([]) == []
    with pytest.raises(ValueError, match="Unknown optimizer: 'lion'"):
        plan_groups([run("lion")])


def test_fusable_rules() -> None:
    base = RunConfig(model=SMALL)
    assert fusable([base, replace(base, seed=3, epochs=9, batch_size=16, optimizer=OptimizerConfig("sgd", 0.1))])
    assert fusable([]) and fusable([base])
    not_fusable = {
        "trains on": [base, replace(base, dataset=DatasetConfig("spirals"))],
        "member 1 trains on": [base, replace(base, dataset=DatasetConfig(val_fraction=0.3))],
        "has model": [base, replace(base, model=ModelConfig("mlp", {"hidden": [32]}))],
        "dropout": [replace(base, model=ModelConfig("mlp", {"dropout": 0.1}))],
        "dropout is": [
            replace(base, model=ModelConfig("sequential", {"layers": [{"type": "dropout"}, "flatten", "linear"]}))
        ],
        "unknown optimizer": [replace(base, optimizer=OptimizerConfig("lion"))],
    }
    for reason, configs in not_fusable.items():
        assert not fusable(configs)
        assert reason in (why_not_fusable(configs) or "")
        with pytest.raises(ValueError, match="cannot train as one population"):
            train_population(configs)
    # a plugin's model passes the rule (nothing is known of it unbuilt); trying to stack it builds it
    plugin = [replace(base, model=ModelConfig("vit"))]
    assert fusable(plugin)
    with pytest.raises(ValueError, match="Unknown model: 'vit'"):
        why_not_fusable(plugin, try_stacking=True)


def test_population_rejects_bad_values_before_training() -> None:
    good = RunConfig(model=SMALL, epochs=1)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        train_population([good, replace(good, optimizer=OptimizerConfig("adam", 1e-3, {"betas": [1.5, 0.9]}))])
    with pytest.raises(ValueError, match="Missing schedule parameter: gamma"):
        train_population([replace(good, schedule=ScheduleConfig("exponential"))])
    with pytest.raises(ValueError, match="Invalid dtype"):
        train_population([good], dtype=torch.int64)


def test_stacked_parameters_hold_each_members_own_init() -> None:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(SMALL, (1, 8, 8), 10))
    stacked = StackedParameters(models, torch.device("cpu"))
    assert stacked.flat.shape == (2, sum(p.numel() for p in models[0].parameters()))
    for row, model in enumerate(models):
        state = stacked.member_state(row)
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 5, 1, 8, 8)
    logits = stacked.forward(x)  # (K, B, C)
    for row, model in enumerate(models):
        torch.testing.assert_close(logits[row], model(x[row]))


def test_stacked_optimizer_hyperparameters_change_per_member_in_place() -> None:
    flat = torch.ones(3, 4)
    optimizer = StackedOptimizer(flat, [OptimizerConfig("sgd", 0.1, {"momentum": 0.9})] * 3)
    optimizer.set_hyperparameter("lr", [0.1, 0.0, 0.5])
    optimizer.step(flat, torch.ones(3, 4))
    assert flat[:, 0].tolist() == pytest.approx([0.9, 1.0, 0.5])
    optimizer.step(flat, torch.ones(3, 4), rows=torch.tensor([0, 2]))  # member 1 frozen: params and state kept
    assert flat[:, 0].tolist() == pytest.approx([0.9 - 0.1 * 1.9, 1.0, 0.5 - 0.5 * 1.9])
    assert optimizer.state["momentum_buffer"][:, 0].tolist() == pytest.approx([1.9, 1.0, 1.9])
    with pytest.raises(ValueError, match="cannot cross zero"):
        optimizer.set_hyperparameter("momentum", [0.9, 0.0, 0.5])
    with pytest.raises(ValueError, match="Invalid lr value"):
        optimizer.set_hyperparameter("lr", [0.1, -1.0, 0.1])
    with pytest.raises(ValueError, match="need 3 values"):
        optimizer.set_hyperparameter("lr", [0.1])
    with pytest.raises(ValueError, match="plan_groups first"):
        StackedOptimizer(flat[:2], [OptimizerConfig("sgd"), OptimizerConfig("sgd", 0.1, {"momentum": 0.9})])


@pytest.mark.parametrize("configs", OPTIMIZER_CASES.values(), ids=OPTIMIZER_CASES.keys())
def test_population_checkpoints_resume_fused_or_alone_float64(float64: None, configs: list[RunConfig]) -> None:
    """Checkpoints after epoch 2 of 4: the fused engine and trainer.train both resume them to the same runs."""
    whole = train_population(configs, dtype=torch.float64)
    saved: dict[int, Checkpoint] = {}
    first_half = train_population(
        configs,
        dtype=torch.float64,
        on_checkpoint=lambda k, ckpt: saved.__setitem__(k, ckpt),
        checkpoint_due=lambda k, epoch: epoch == 2,
        should_stop=lambda k: k in saved,
    )
    assert [(r.status, len(r.points)) for r in first_half] == [("stopped", 2)] * len(configs)
    # through bytes, as the service stores them (torch.load with weights_only=True)
    starts = [checkpoint_from_bytes(checkpoint_to_bytes(saved[k])) for k in range(len(configs))]
    resumed = train_population(configs, dtype=torch.float64, starts=starts)
    for fused, reference in zip(resumed, whole, strict=True):
        assert [p.epoch for p in fused.points] == [1, 2, 3, 4]
        assert_same_run(fused, reference, rel=1e-9)
    alone = [train(c, start=s) for c, s in zip(configs, starts, strict=True)]
    for member, reference in zip(whole, alone, strict=True):
        assert_same_run(member, reference, rel=1e-6)


def test_exploit_copies_a_members_weights_and_optimizer_state() -> None:
    configs = OPTIMIZER_CASES["adam-amsgrad"]
    models = []
    for c in configs:
        torch.manual_seed(c.seed)
        models.append(build_model(c.model, (64,), 10))
    stacked = StackedParameters(models, torch.device("cpu"))
    optimizer = StackedOptimizer(stacked.flat, [c.optimizer for c in configs])
    grad = torch.randn_like(stacked.flat)
    optimizer.step(stacked.flat, grad)
    stacked.copy_row(2, 0)
    optimizer.copy_member(2, 0)
    assert torch.equal(stacked.flat[2], stacked.flat[0])
    assert not torch.equal(stacked.flat[1], stacked.flat[0])
    for state in optimizer.state.values():
        assert torch.equal(state[2], state[0])
    # hyperparameters are the member's own: exploit copies state, explore changes numbers
    assert optimizer.member_hyperparameters(2)[0] == pytest.approx(configs[2].optimizer.lr)
    assert [t.shape for t in stacked.split_row(stacked.flat[0])] == [p.shape for p in models[0].parameters()]
    assert torch.equal(stacked.join_row(stacked.split_row(stacked.flat[1])), stacked.flat[1])


# cnn and resnet: grouped convolutions, each member's BatchNorm statistics apart (trainer.population.functional)
CNN = ModelConfig("cnn", {"channels": 4})
CNN_CASES = {
    "adam": ("adam", [1e-3, 3e-3, 1e-2], [{}, {"weight_decay": 1e-3}, {"betas": [0.8, 0.99], "eps": 1e-6}]),
    "sgd-momentum": (
        "sgd",
        [0.05, 0.02, 0.1],
        [{"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.1}, {"momentum": 0.8, "weight_decay": 1e-3}],
    ),
}


def cnn_members(optimizer: str, lrs: list[float], params: list[dict[str, Any]]) -> list[RunConfig]:
    """Three 2-epoch cnn members: seeds 3, 7, 7 (two share a split), their own hyperparameters and schedules."""
    schedules = [ScheduleConfig(), ScheduleConfig("cosine"), ScheduleConfig("cosine", warmup_epochs=1)]
    return [
        RunConfig(
            model=CNN,
            optimizer=OptimizerConfig(optimizer, lr, p),
            schedule=schedule,
            epochs=2,
            batch_size=100,  # 15 steps an epoch, the last on 38 samples
            seed=seed,
        )
        for lr, p, schedule, seed in zip(lrs, params, schedules, (3, 7, 7), strict=True)
    ]


@pytest.mark.parametrize("case", CNN_CASES.values(), ids=CNN_CASES.keys())
def test_population_cnn_matches_independent_runs_float64(float64: None, case: tuple[Any, ...]) -> None:
    configs = cnn_members(*case)
    assert len(plan_groups(configs)) == 1
    saved: dict[int, Checkpoint] = {}
    fused = train_population(
        configs,
        dtype=torch.float64,
        on_checkpoint=lambda k, ckpt: saved.__setitem__(k, ckpt),
        checkpoint_due=lambda k, epoch: epoch == 2,
    )
    for k, config in enumerate(configs):
        theirs: list[Checkpoint] = []
        reference = train(config, on_checkpoint=theirs.append, checkpoint_due=lambda epoch: epoch == 2)
        assert_same_run(fused[k], reference, rel=1e-6)
        # the member's state_dict, BatchNorm's running statistics included, is the separate model's
        ours, expected = saved[k].model_state, theirs[0].model_state
        assert list(ours) == list(expected)
        for name, value in expected.items():
            torch.testing.assert_close(ours[name], value, rtol=1e-6, atol=1e-9, msg=name)
        assert ours["2.num_batches_tracked"].item() == 30
        assert not torch.equal(ours["2.running_mean"], torch.zeros(4, dtype=torch.float64))
    assert len({fused[k].points[-1].val_loss for k in range(3)}) == 3


def test_population_cnn_resumes_batchnorm_statistics_from_checkpoints_float64(float64: None) -> None:
    """A checkpoint after epoch 1 of 2 carries the running statistics: resumed fused or alone, the same runs."""
    configs = cnn_members(*CNN_CASES["adam"])
    whole = train_population(configs, dtype=torch.float64)
    saved: dict[int, Checkpoint] = {}
    train_population(
        configs,
        dtype=torch.float64,
        on_checkpoint=lambda k, ckpt: saved.__setitem__(k, ckpt),
        checkpoint_due=lambda k, epoch: epoch == 1,
        should_stop=lambda k: k in saved,
    )
    starts = [checkpoint_from_bytes(checkpoint_to_bytes(saved[k])) for k in range(3)]
    assert starts[0].model_state["2.num_batches_tracked"].item() == 15
    resumed = train_population(configs, dtype=torch.float64, starts=starts)
    alone = [train(c, start=s) for c, s in zip(configs, starts, strict=True)]
    for k in range(3):
        assert_same_run(resumed[k], whole[k], rel=1e-9)
        assert_same_run(whole[k], alone[k], rel=1e-6)


def test_population_resnet_float32_matches_separate_runs() -> None:
    model = ModelConfig("resnet", {"width": 4, "blocks": 1})
    configs = [
        RunConfig(model=model, optimizer=OptimizerConfig("adam", lr), epochs=2, batch_size=128, seed=seed)
        for seed, lr in [(0, 3e-3), (1, 1e-2)]
    ]
    fused = train_population(configs)
    for result, config in zip(fused, configs, strict=True):
        assert_same_run(result, train(config), rel=1e-3)


def test_population_cnn_diverged_member_keeps_its_batchnorm_statistics_float64(float64: None) -> None:
    """A member frozen at step 1 of 15 (finite weights: factor < 1 flags the first loss) sees 14 more batches
    in the stacked forward: its running statistics must not learn from them, or its val_loss would differ."""
    base = RunConfig(model=CNN, optimizer=OptimizerConfig("sgd", 0.5, {"momentum": 0.9}), epochs=2, batch_size=100)
    configs = [
        replace(base, seed=1, divergence=DivergenceConfig(factor=0.5)),
        replace(base, optimizer=OptimizerConfig("sgd", 0.05, {"momentum": 0.9}), seed=2),
    ]
    fused = train_population(configs, dtype=torch.float64)
    assert [r.status for r in fused] == ["diverged", "succeeded"]
    assert fused[0].reason is not None and fused[0].reason.startswith("smoothed loss"), fused[0].reason
    assert math.isfinite(fused[0].points[0].val_loss)
    for result, config in zip(fused, configs, strict=True):
        assert_same_run(result, train(config), rel=1e-6)


def _members_of(model: ModelConfig, input_shape: tuple[int, ...], k: int = 3) -> list[nn.Module]:
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(model, input_shape, 10))
    return models


def _assert_same_as_models(stacked: FunctionalStack, models: list[nn.Module], x: Tensor) -> None:
    """Two training forwards (BatchNorm learns from both), an eval forward and the gradient, against each model."""
    for train_mode in (True, True, False):
        logits = stacked.forward(x, train=train_mode)  # (K, B, C)
        for row, model in enumerate(models):
            model.train(train_mode)
            torch.testing.assert_close(logits[row], model(x[row]))
    grad = stacked.grad(stacked.forward(x).square().sum())  # (K, P)
    for row, model in enumerate(models):
        model.train()
        model.zero_grad()
        model(x[row]).square().sum().backward()
        torch.testing.assert_close(grad[row], torch.cat([p.grad.flatten() for p in model.parameters()]))
        state = stacked.member_state(row)
        assert list(state) == list(model.state_dict())
        for name, value in model.state_dict().items():
            torch.testing.assert_close(state[name], value, msg=name)


@pytest.mark.parametrize(
    ("model", "input_shape"),
    [
        (CNN, (1, 8, 8)),
        (ModelConfig("cnn", {"channels": 3, "depth": 3}), (8,)),  # Conv1d over a flat input
        (ModelConfig("resnet", {"width": 4, "blocks": 2}), (1, 40)),
    ],
    ids=["cnn-2d", "cnn-1d-flat", "resnet-1d"],
)
def test_functional_stack_runs_each_member_as_its_model(model: ModelConfig, input_shape: tuple[int, ...]) -> None:
    models = _members_of(model, input_shape)
    stacked = stack_models(models, torch.device("cpu"))
    assert isinstance(stacked, FunctionalStack) and stacked.grouped
    assert stacked.flat.shape == (3, sum(p.numel() for p in models[0].parameters()))
    _assert_same_as_models(stacked, models, torch.randn(3, 5, *input_shape))


def test_functional_stack_falls_back_to_vmap_for_other_layers() -> None:
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 10)))
    stacked = stack_models(models, torch.device("cpu"))
    assert isinstance(stacked, FunctionalStack) and not stacked.grouped
    _assert_same_as_models(stacked, models, torch.randn(3, 5, 1, 8, 8))


def test_stack_models_keeps_batched_matmul_for_mlps() -> None:
    assert isinstance(stack_models(_members_of(SMALL, (1, 8, 8)), torch.device("cpu")), StackedParameters)


def test_functional_stack_copies_keeps_and_freezes_buffers() -> None:
    stacked = stack_models(_members_of(CNN, (1, 8, 8)), torch.device("cpu"))
    assert isinstance(stacked, FunctionalStack)
    x = torch.randn(3, 16, 1, 8, 8)
    stacked.forward(x)
    before = [stacked.member_state(row) for row in range(3)]
    stacked.forward(x, rows=torch.tensor([0, 2]))  # member 1 frozen: its buffers stay
    assert all(torch.equal(v, before[1][k]) for k, v in stacked.member_state(1).items())
    assert not torch.equal(stacked.member_state(0)["2.running_mean"], before[0]["2.running_mean"])
    assert stacked.member_state(0)["2.num_batches_tracked"].item() == 2

    stacked.copy_row(1, 2)
    two = stacked.member_state(2)
    assert all(torch.equal(v, two[k]) for k, v in stacked.member_state(1).items())
    assert not torch.equal(stacked.member_state(0)["2.running_var"], two["2.running_var"])

    stacked.keep(torch.tensor([2, 0]))
    assert stacked.flat.shape[0] == 2
    assert all(torch.equal(v, two[k]) for k, v in stacked.member_state(0).items())
    logits = stacked.forward(x[:2], train=False)  # the views and buffers bound after keep are the kept ones
    assert logits.shape == (2, 16, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", [SMALL, CNN], ids=["mlp", "cnn"])
def test_population_on_cuda_matches_separate_cuda_runs(monkeypatch: pytest.MonkeyPatch, model: ModelConfig) -> None:
    # TF32 convolutions would round the grouped and the separate convs differently; compare in full float32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    configs = [
        RunConfig(model=model, optimizer=OptimizerConfig("adam", lr), epochs=2, batch_size=100, seed=seed)
        for seed, lr in enumerate([1e-3, 3e-3, 1e-2, 3e-3])
    ]
    fused = train_population(configs, device="cuda")
    for result, config in zip(fused, configs, strict=True):
        assert_same_run(result, train(config, device="cuda"), rel=1e-3)


def test_population_over_its_memory_budget_trains_in_chunks_with_the_same_results() -> None:
    configs = OPTIMIZER_CASES["adam-amsgrad"]
    whole = train_population(configs, memory_budget=None)
    first = configs[0]
    data = load_dataset(first.dataset, first.data_seed)
    model = build_model(first.model, data.input_shape, data.n_classes)
    one_member = memory.member_bytes(first, model, data.input_shape, torch.float32)
    assert 1_000 < one_member < 50 * 2**20  # an estimate of the right order for a small MLP
    assert memory.split([0, 1, 2], one_member, budget=one_member * 2) == [[0, 1], [2]]
    chunked = train_population(configs, memory_budget=1)  # one member per group
    for ours, theirs in zip(chunked, whole, strict=True):
        assert_same_run(ours, theirs, rel=1e-5)
    assert memory.budget_bytes(torch.device("cpu")) is not None
