"""trainer.sequential: a layer list built as torch layers, its initial weights fixed by the seed alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from trainer.sequential import LayerError, Residual, build_sequential


def test_build_sequential_draws_the_weights_of_the_same_network_written_by_hand() -> None:
    layers: list[Any] = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        "batchnorm",
        "relu",
        {"type": "residual", "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, "tanh"]},
        {"type": "maxpool", "kernel_size": 2},
        "flatten",
        {"type": "linear", "out_features": 16},
        {"type": "layernorm"},
        {"type": "gelu", "approximate": "tanh"},
        "linear",
    ]
    torch.manual_seed(3)
    built = build_sequential({"layers": layers}, (1, 8, 8), 5)
    torch.manual_seed(3)
    by_hand = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh())),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.LayerNorm(16),
        nn.GELU(approximate="tanh"),
        nn.Linear(16, 5),
    )
    assert list(built.state_dict()) == list(by_hand.state_dict())
    for name, value in by_hand.state_dict().items():
        torch.testing.assert_close(built.state_dict()[name], value, rtol=0, atol=0, msg=name)
    x = torch.randn(6, 1, 8, 8)
    torch.testing.assert_close(built(x), by_hand(x))


@pytest.mark.parametrize(
    ("shape", "layer", "expected"),
    [
        ((4,), "batchnorm", nn.BatchNorm1d),
        ((4, 9), "batchnorm", nn.BatchNorm1d),
        ((4, 9, 9), "batchnorm", nn.BatchNorm2d),
        ((4, 9), {"type": "maxpool", "kernel_size": 2}, nn.MaxPool1d),
        ((4, 9, 9), {"type": "avgpool", "kernel_size": 2}, nn.AvgPool2d),
        ((4, 9), {"type": "adaptive_avgpool", "output_size": 3}, nn.AdaptiveAvgPool1d),
    ],
)
def test_build_sequential_picks_the_dimension_from_the_input(
    shape: tuple[int, ...], layer: Any, expected: type
) -> None:
    model = build_sequential({"layers": [layer, "flatten", "linear"]}, shape, 3)
    assert type(model[0]) is expected


def test_build_sequential_refuses_a_pool_over_flat_samples_torch_would_take_as_one_unbatched_sample() -> None:
    # nn.MaxPool1d runs on a (B, C) batch without complaint, pooling across the batch: refused by rank instead
    with pytest.raises(LayerError, match=r"needs \(C, L\) or \(C, H, W\)") as caught:
        build_sequential({"layers": [{"type": "maxpool", "kernel_size": 2}, "linear"]}, (8,), 3)
    assert caught.value.loc == ("layers", 0)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"layers": []}, "non-empty list"),
        ({"layers": ["relu"], "width": 3}, "Unknown parameter"),
        ({"layers": [{"type": "conv3d"}]}, "unknown layer type 'conv3d'"),
        ({"layers": [{"type": "conv1d", "out_channels": 2}]}, "needs kernel_size"),
        ({"layers": [{"type": "linear", "in_features": 3}]}, "takes no \\['in_features'\\]"),
        ({"layers": [{"type": "linear", "out_features": -1}]}, "Invalid out_features"),
        ({"layers": [{"type": "maxpool", "kernel_size": 0}, "flatten", "linear"]}, "maxpool cannot take"),
    ],
)
def test_build_sequential_rejects_bad_lists_with_a_message(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_sequential(params, (2, 8), 3)


def test_build_sequential_checks_on_meta_tensors_without_random_draws() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with pytest.raises(LayerError):
        build_sequential({"layers": [{"type": "conv1d", "out_channels": 4, "kernel_size": 99}]}, (1, 40), 3)
    assert torch.equal(torch.get_rng_state(), before)
