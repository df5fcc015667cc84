"""Each model builds for each input layout, trains a few steps, and rejects bad parameters."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from trainer.config import ModelConfig, OptimizerConfig
from trainer.models import MODELS, build_model, count_parameters
from trainer.optim import build_optimizer

SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 40), "spirals": (2,), "images": (3, 16, 16)}
CONFIGS = [
    ModelConfig("mlp"),
    ModelConfig("mlp", {"hidden": [32], "dropout": 0.2}),
    ModelConfig("cnn", {"channels": 8, "depth": 3}),
    ModelConfig("resnet", {"width": 8, "blocks": 2}),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{len(c.params)}")
@pytest.mark.parametrize("layout", sorted(SHAPES))
def test_build_model_trains_a_few_steps(cfg: ModelConfig, layout: str) -> None:
    torch.manual_seed(0)
    shape, n_classes = SHAPES[layout], 4
    # a learnable target: the class is decided by the sign pattern of two input features
    x = torch.randn(64, *shape)
    flat = x.flatten(1)
    y = (flat[:, 0] > 0).long() * 2 + (flat[:, -1] > 0).long()
    model = build_model(cfg, shape, n_classes)
    assert model(x).shape == (64, n_classes)
    optimizer = build_optimizer(model.parameters(), OptimizerConfig("adam", 1e-2))
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_count_parameters_mlp() -> None:
    model = build_model(ModelConfig("mlp"), (1, 8, 8), 10)
    assert count_parameters(model) == (64 * 128 + 128) + (128 * 128 + 128) + (128 * 10 + 10)


def test_build_model_cnn_keeps_tiny_inputs_wide_enough() -> None:
    # eight conv blocks on 8x8 digits: pooling stops at 2x2 instead of shrinking to nothing
    model = build_model(ModelConfig("cnn", {"channels": 4, "depth": 8}), (1, 8, 8), 10)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_build_model_resnet_uses_conv1d_for_signals() -> None:
    model = build_model(ModelConfig("resnet"), (1, 40), 10)
    assert any(isinstance(m, nn.Conv1d) for m in model.modules())
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "params", "shape", "message"),
    [
        ("transformer", {}, (2,), "Unknown model: 'transformer'"),
        ("mlp", {"hidden": [0]}, (2,), "Invalid hidden: 0"),
        ("mlp", {"hidden": 128}, (2,), "Invalid hidden: 128"),
        ("mlp", {"dropout": 1.0}, (2,), "Invalid dropout: 1.0"),
        ("mlp", {"width": 3}, (2,), r"Unknown parameter for model 'mlp': \['width'\]"),
        ("cnn", {"depth": 0}, (2,), "Invalid depth: 0"),
        ("cnn", {"channels": 2.5}, (2,), "Invalid channels: 2.5"),
        ("cnn", {}, (1, 2, 3, 4), "Convolutional models need input shape"),
        ("resnet", {"blocks": True}, (2,), "Invalid blocks: True"),
        ("resnet", {"width": 0}, (2,), "Invalid width: 0"),
    ],
)
def test_build_model_rejects_invalid(name: str, params: dict[str, Any], shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(name, params), shape, 3)


def test_models_registry_names() -> None:
    assert sorted(MODELS) == ["cnn", "mlp", "resnet", "sequential"]
