"""trainer.population.stackable: which models train fused, tried on members; and the fused steps of a plugin's model
and a sequential model equal to each member trained alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.example_plugin import example_plugin  # noqa: F401  (fixture)
from tests.trainer.test_population import assert_same_run, float64  # noqa: F401  (fixture)
from trainer import DatasetConfig, ModelConfig, OptimizerConfig, RunConfig, train, train_population
from trainer.population.functional import stack_models
from trainer.population.plan import why_not_fusable
from trainer.population.stackable import why_not_stackable
from trainer.sequential import build_sequential

SEQUENTIAL: list[Any] = [
    {"type": "conv1d", "out_channels": 4, "kernel_size": 3, "padding": 1},
    "batchnorm",
    "gelu",
    {"type": "residual", "layers": [{"type": "linear", "out_features": 12}, "layernorm", "tanh"]},
    {"type": "avgpool", "kernel_size": 2},
    "flatten",
    {"type": "linear", "out_features": 16},
    "relu",
    "linear",
]


def tiny_transformer() -> Callable[[tuple[int, ...], int], nn.Module]:
    from lrlab_example_plugin.models import tiny_transformer as factory

    return lambda shape, n: factory(shape, n, width=8, heads=2, depth=2)


def sequential(shape: tuple[int, ...], n: int) -> nn.Module:
    return build_sequential({"layers": SEQUENTIAL}, shape, n)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) if x.mean() > 0 else self.b(x)  # data-dependent control flow


class ReadsAValue(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) / x.abs().max().item()


class ReplacesABuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.register_buffer("mean", torch.zeros(6))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.mean = 0.9 * self.mean + 0.1 * x.mean(0).detach()  # a new tensor, not an in-place update
        return self.linear(x - self.mean)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), (6,)),  # batched matmul
        (lambda: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.GELU(), nn.Linear(8, 3)), (6,)),  # vmap + BN
        (lambda: sequential((2, 12), 3), (2, 12)),
    ],
    ids=["mlp", "batchnorm-under-vmap", "sequential"],
)
def test_why_not_stackable_passes_models_the_fused_path_runs_exactly(
    build: Callable[[], nn.Module], shape: Any
) -> None:
    assert why_not_stackable(build, shape) is None


def test_why_not_stackable_passes_the_example_plugin_model(example_plugin: None) -> None:  # noqa: F811
    factory = tiny_transformer()
    assert why_not_stackable(lambda: factory((10, 3), 4), (10, 3)) is None


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.1), nn.Linear(8, 3)), "draws random numbers"),
        (Branches, "data-dependent control flow"),
        (ReadsAValue, ".item()"),
        (lambda: nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=None), nn.Linear(8, 3)), "vmap"),
        (ReplacesABuffer, "keeps state outside its parameters and buffers, or replaces a buffer"),
    ],
    ids=["dropout", "branches", "item", "batchnorm-cumulative", "replaced-buffer"],
)
def test_why_not_stackable_says_why(build: Callable[[], nn.Module], words: str) -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    reason = why_not_stackable(build, (6,))
    assert reason is not None and words in reason, reason
    assert torch.equal(torch.get_rng_state(), before)  # the probe's draws are its own
    assert torch.get_default_dtype() == torch.float32


def _fused_equals_separate(factory: Callable[[tuple[int, ...], int], nn.Module], shape: tuple[int, ...]) -> None:
    """K members with their own seeds and lrs, 6 SGD steps on their own batches: fused (stacked, one update of the
    flat (K, P) tensor per step) against each trained alone with torch.optim.SGD, in float64."""
    k, n_classes, lrs = 3, 4, [0.05, 0.2, 0.5]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        models = []
        for seed in range(k):
            torch.manual_seed(seed)
            models.append(factory(shape, n_classes))
        stacked = stack_models([m for m in models], torch.device("cpu"))
        data = torch.Generator().manual_seed(0)
        lr = torch.tensor(lrs).unsqueeze(1)  # (K, 1)
        optimizers = [torch.optim.SGD(m.parameters(), lr=r) for m, r in zip(models, lrs, strict=True)]
        for _ in range(6):
            x = torch.randn(k, 8, *shape, generator=data)  # (K, B, *shape): each member its own batch
            y = torch.randint(0, n_classes, (k, 8), generator=data)  # (K, B)
            logits = stacked.forward(x)  # (K, B, C)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, 8).mean(1)
            grad = stacked.grad(losses.sum())  # (K, P): row k is member k's own gradient
            with torch.no_grad():
                stacked.flat -= lr * grad
            for row, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x[row]), y[row])
                torch.testing.assert_close(losses[row].detach(), loss.detach(), rtol=1e-6, atol=1e-9)
                loss.backward()
                optimizer.step()
        for row, model in enumerate(models):
            state = stacked.member_state(row)
            for name, value in model.state_dict().items():
                torch.testing.assert_close(state[name], value, rtol=1e-6, atol=1e-9, msg=name)
    finally:
        torch.set_default_dtype(previous)


def test_fused_steps_of_the_example_plugin_model_equal_separate_runs_float64(
    example_plugin: None,  # noqa: F811
    one_thread: None,
) -> None:
    _fused_equals_separate(tiny_transformer(), (10, 3))


def test_fused_steps_of_a_sequential_model_equal_separate_runs_float64(one_thread: None) -> None:
    _fused_equals_separate(sequential, (2, 12))


# --- the engine: train_population against trainer.train, member by member -----------------------------------

LAYER_LISTS = {
    "grouped": [  # every layer one grouped forward knows: conv, BatchNorm, GELU, a residual, linear over (C, L)
        {"type": "conv1d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        "batchnorm",
        "gelu",
        {"type": "residual", "layers": [{"type": "linear", "out_features": 40}, "tanh"]},
        {"type": "maxpool", "kernel_size": 2},
        "flatten",
        "linear",
    ],
    "vmap": [  # layernorm: vmap over functional_call
        "flatten",
        {"type": "linear", "out_features": 16},
        "layernorm",
        "relu",
        {"type": "residual", "layers": [{"type": "linear", "out_features": 16}, "gelu"]},
        "linear",
    ],
}


def _members(model: ModelConfig, dataset: DatasetConfig) -> list[RunConfig]:
    optimizers = [
        OptimizerConfig("sgd", 0.05, {"momentum": 0.9}),
        OptimizerConfig("adam", 3e-3),
        OptimizerConfig("sgd", 0.2),
    ]
    return [
        RunConfig(dataset=dataset, model=model, optimizer=opt, epochs=2, batch_size=64, seed=seed)
        for seed, opt in enumerate(optimizers)
    ]


@pytest.mark.parametrize("layers", LAYER_LISTS.values(), ids=LAYER_LISTS.keys())
def test_population_of_a_sequential_model_matches_independent_runs_float64(
    float64: None,  # noqa: F811
    one_thread: None,
    layers: list[Any],
) -> None:
    configs = _members(ModelConfig("sequential", {"layers": layers}), DatasetConfig("mnist1d"))
    assert why_not_fusable(configs, try_stacking=True) is None
    fused = train_population(configs, dtype=torch.float64)
    for result, config in zip(fused, configs, strict=True):
        assert_same_run(result, train(config), rel=1e-6)
    assert len({r.points[-1].val_loss for r in fused}) == 3


def test_population_of_the_example_plugin_model_matches_independent_runs_float64(
    example_plugin: None,  # noqa: F811
    float64: None,  # noqa: F811
    one_thread: None,
) -> None:
    model = ModelConfig("tiny-transformer", {"width": 8, "heads": 2, "depth": 1})
    configs = _members(model, DatasetConfig("motifs", params={"n_samples": 300, "length": 12}))
    assert why_not_fusable(configs, try_stacking=True) is None
    fused = train_population(configs, dtype=torch.float64)
    for result, config in zip(fused, configs, strict=True):
        assert result.status == "succeeded"
        assert_same_run(result, train(config), rel=1e-6)


def test_population_refuses_a_plugin_model_it_cannot_stack(example_plugin: None) -> None:  # noqa: F811
    model = ModelConfig("tiny-transformer", {"width": 8, "heads": 2, "depth": 1, "dropout": 0.1})
    configs = _members(model, DatasetConfig("motifs", params={"n_samples": 300, "length": 12}))
    assert why_not_fusable(configs) is None  # the rule cannot tell: only trying does
    reason = why_not_fusable(configs, try_stacking=True)
    assert reason is not None and "draws random numbers" in reason
    with pytest.raises(ValueError, match="cannot train as one population: its forward draws random numbers"):
        train_population(configs)
