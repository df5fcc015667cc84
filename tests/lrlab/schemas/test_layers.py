"""The `sequential` layer list: its schema, and the torch-free shape inference held to what torch builds."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from lrlab.schemas.layers import (
    MAX_LAYERS,
    Inferred,
    SequentialSpec,
    ShapeError,
    infer_shapes,
    walk_shapes,
)
from trainer.models import count_parameters
from trainer.sequential import LayerError, build_sequential

UNBOUNDED = {"max_parameters": 1 << 62, "max_activation": 1 << 62}


def spec(*layers: Any) -> SequentialSpec:
    return SequentialSpec.model_validate({"name": "sequential", "layers": list(layers)})


def infer(layers: list[Any], input_shape: tuple[int, ...], n_classes: int = 10, **bounds: int) -> Inferred:
    return infer_shapes(spec(*layers).layers, input_shape, n_classes, **bounds)


def shape_error(layers: list[Any], input_shape: tuple[int, ...], n_classes: int = 10, **bounds: int) -> ShapeError:
    with pytest.raises(ShapeError) as caught:
        infer(layers, input_shape, n_classes, **bounds)
    return caught.value


# --- the schema -----------------------------------------------------------------------------------


def test_sequential_spec_takes_bare_types_and_stores_every_argument() -> None:
    model = spec("flatten", {"type": "linear", "out_features": 32}, "gelu", "linear")
    assert model.model_dump(mode="json")["layers"] == [
        {"type": "flatten"},
        {"type": "linear", "out_features": 32, "bias": True},
        {"type": "gelu", "approximate": "none"},
        {"type": "linear", "out_features": None, "bias": True},
    ]


@pytest.mark.parametrize(
    ("layers", "loc"),
    [
        ([{"type": "transformer"}], ("layers", 0)),
        ([{"type": "conv2d", "out_channels": 4}], ("layers", 0, "conv2d", "kernel_size")),
        ([{"type": "conv2d", "out_channels": 4, "kernel_size": 0}], ("layers", 0, "conv2d", "kernel_size")),
        ([{"type": "conv1d", "out_channels": 4, "kernel_size": 3, "dilation": 2}], ("layers", 0, "conv1d", "dilation")),
        ([{"type": "linear", "out_features": 1.5}], ("layers", 0, "linear", "out_features")),
        ([{"type": "linear", "out_features": True}], ("layers", 0, "linear", "out_features")),
        ([{"type": "dropout", "p": 1.0}], ("layers", 0, "dropout", "p")),
        ([{"type": "dropout", "p": float("nan")}], ("layers", 0, "dropout", "p")),
        (["relu", {"type": "residual", "layers": []}], ("layers", 1, "residual", "layers")),
        ([{"type": "adaptive_avgpool", "output_size": 4096}], ("layers", 0, "adaptive_avgpool", "output_size")),
        ([], ("layers",)),
        ([3], ("layers", 0)),
    ],
)
def test_sequential_spec_rejects_bad_layers_at_their_place(layers: list[Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(*layers)
    assert loc in [e["loc"] for e in caught.value.errors()], caught.value.errors()


def test_sequential_spec_bounds_layers_nested_ones_included() -> None:
    spec(*["relu"] * MAX_LAYERS)
    with pytest.raises(ValidationError, match="at most 64"):
        spec(*["relu"] * (MAX_LAYERS + 1))
    nested = {"type": "residual", "layers": ["relu"] * 40}
    with pytest.raises(ValidationError, match="65 layers in all"):
        spec(*["relu"] * 24, nested)


def test_sequential_spec_bounds_residual_depth() -> None:
    layer: Any = "relu"
    for _ in range(4):
        layer = {"type": "residual", "layers": [layer]}
    spec(layer)
    with pytest.raises(ValidationError, match="nested 5 deep"):
        spec({"type": "residual", "layers": [layer]})


def test_sequential_spec_refuses_a_deep_nest_without_recursing_forever() -> None:
    layer: Any = "relu"
    for _ in range(3000):
        layer = {"type": "residual", "layers": [layer]}
    with pytest.raises(ValidationError):
        spec(layer)


# --- shapes by hand ---------------------------------------------------------------------------------


def test_infer_shapes_counts_parameters_as_torch_names_them() -> None:
    # conv 1->4 k3: 4*1*9 + 4; bn: 8; conv 4->4 k3 no bias: 144; flatten (4*2*2); linear 16->10: 170
    layers = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        "batchnorm",
        "relu",
        {"type": "maxpool", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        "flatten",
        "linear",
    ]
    assert infer(layers, (1, 8, 8)) == Inferred((10,), 40 + 8 + 144 + 170)


@pytest.mark.parametrize(
    ("layers", "input_shape", "loc", "words"),
    [
        ([{"type": "conv2d", "out_channels": 4, "kernel_size": 3}], (8,), ("layers", 0), ["(8,)", "(C, H, W)"]),
        ([{"type": "conv1d", "out_channels": 4, "kernel_size": 3}], (1, 8, 8), ("layers", 0), ["(1, 8, 8)"]),
        (
            ["flatten", {"type": "conv1d", "out_channels": 4, "kernel_size": 3}],
            (1, 40),
            ("layers", 1),
            ["(40,)", "(C, L)"],
        ),
        ([{"type": "conv2d", "out_channels": 4, "kernel_size": 9}, "flatten", "linear"], (1, 8, 8), ("layers", 0), []),
        ([{"type": "maxpool", "kernel_size": 2}, "flatten", "linear"], (8,), ("layers", 0), ["(8,)"]),
        ([{"type": "maxpool", "kernel_size": 2, "padding": 2}], (1, 8, 8), ("layers", 0), ["half"]),
        ([{"type": "avgpool", "kernel_size": 9}], (1, 40, 4), ("layers", 0), ["(1, 40, 4)"]),
        ([{"type": "layernorm", "normalized_shape": [8, 8]}], (8, 4), ("layers", 0), ["[8, 8]"]),
        (["flatten", {"type": "linear", "out_features": 3}], (1, 8, 8), ("layers", 1), ["(3,)", "(10,)"]),
        (["linear"], (1, 40), ("layers", 0), ["(1, 10)"]),
        (["relu"], (1, 8, 8), ("layers", 0), ["(1, 8, 8)"]),
        (
            ["flatten", {"type": "residual", "layers": [{"type": "linear", "out_features": 32}]}, "linear"],
            (1, 8, 8),
            ("layers", 1),
            ["(64,)", "(32,)"],
        ),
        (
            [{"type": "residual", "layers": ["relu", {"type": "conv1d", "out_channels": 1, "kernel_size": 50}]}],
            (1, 40),
            ("layers", 0, "layers", 1),
            ["(1, 40)"],
        ),
        (
            ["flatten", "linear", {"type": "residual", "layers": ["linear"]}],
            (1, 8, 8),
            ("layers", 2, "layers", 0),
            ["last linear"],
        ),
        (["flatten", "linear", "linear"], (1, 8, 8), ("layers", 1), ["last linear"]),
    ],
)
def test_infer_shapes_names_the_layer_that_does_not_fit(
    layers: list[Any], input_shape: tuple[int, ...], loc: tuple[Any, ...], words: list[str]
) -> None:
    error = shape_error(layers, input_shape)
    assert error.loc == loc, error
    for word in words:
        assert word in error.msg, error.msg
    with pytest.raises(LayerError) as built:  # torch refuses the same layer
        build_sequential({"layers": spec(*layers).model_dump(mode="json")["layers"]}, input_shape, 10)
    assert built.value.loc == loc, built.value


def test_infer_shapes_bounds_parameters_and_activations() -> None:
    layers = ["flatten", {"type": "linear", "out_features": 1000}, "relu", "linear"]  # 64*1000+1000 + 1000*10+10
    assert infer(layers, (1, 8, 8), max_parameters=75_010).n_parameters == 75_010
    assert shape_error(layers, (1, 8, 8), max_parameters=75_009).loc == ("layers",)
    wide = [{"type": "adaptive_avgpool", "output_size": 1024}, "flatten", "linear"]
    error = shape_error(wide, (64, 8, 8), max_activation=1 << 24)
    assert error.loc == ("layers", 0) and "67,108,864 values" in error.msg


# --- shapes held to torch over random lists -------------------------------------------------------

INPUT_SHAPES = [(2,), (8,), (1, 40), (3, 17), (1, 8, 8), (3, 12, 10)]


def _random_layer(rng: random.Random, shape: tuple[int, ...], depth: int) -> dict[str, Any]:
    """A layer that usually fits `shape` (one of five does not have to): kernels near the input's size."""
    sizes = shape[1:] if len(shape) > 1 else shape
    small = max(1, min(sizes))
    kinds = {1: ["linear", "batchnorm", "layernorm", "relu", "gelu", "tanh", "dropout", "flatten"]}
    kinds[2] = [*kinds[1], "conv1d", "maxpool", "avgpool", "adaptive_avgpool", "residual"]
    kinds[3] = [*kinds[1], "conv2d", "maxpool", "avgpool", "adaptive_avgpool", "residual"]
    pool = kinds.get(len(shape), kinds[1])
    if rng.random() < 0.2:
        pool = list({*kinds[2], *kinds[3]})
    kind = rng.choice(sorted(pool))
    if kind == "residual" and depth >= 2:
        kind = "relu"
    kernel = rng.randint(1, small + 2)
    if kind == "linear":
        return {"type": "linear", "out_features": rng.randint(1, 12), "bias": rng.random() < 0.7}
    if kind in ("conv1d", "conv2d"):
        return {
            "type": kind,
            "out_channels": rng.randint(1, 6),
            "kernel_size": kernel,
            "stride": rng.randint(1, 3),
            "padding": rng.randint(0, 2),
            "bias": rng.random() < 0.7,
        }
    if kind in ("maxpool", "avgpool"):
        return {
            "type": kind,
            "kernel_size": kernel,
            "stride": rng.choice([None, 1, 2, 3]),
            "padding": rng.randint(0, max(0, kernel // 2 + (rng.random() < 0.1))),
        }
    if kind == "adaptive_avgpool":
        return {"type": kind, "output_size": rng.randint(1, small + 1)}
    if kind == "layernorm":
        trailing = list(shape[-rng.randint(1, len(shape)) :])
        return {"type": kind, "normalized_shape": rng.choice([None, trailing, [*trailing[:-1], trailing[-1] + 1]])}
    if kind == "gelu":
        return {"type": kind, "approximate": rng.choice(["none", "tanh"])}
    if kind == "dropout":
        return {"type": kind, "p": rng.choice([0.0, 0.1, 0.5])}
    if kind == "residual":
        return {"type": kind, "layers": _residual_body(rng, shape, depth)}
    return {"type": kind}


def _residual_body(rng: random.Random, shape: tuple[int, ...], depth: int) -> list[dict[str, Any]]:
    """Usually shape-keeping (same channels, padding (k - 1) / 2 with odd k), sometimes not."""
    body: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.5:
            kernel = rng.choice([1, 3, 5])
            conv = "conv1d" if len(shape) == 2 else "conv2d"
            pad = (kernel - 1) // 2 if rng.random() < 0.9 else 0
            body.append({"type": conv, "out_channels": shape[0], "kernel_size": kernel, "padding": pad})
        elif rng.random() < 0.5:
            body.append({"type": "linear", "out_features": shape[-1] if rng.random() < 0.9 else shape[-1] + 1})
        else:
            body.append(_random_layer(rng, shape, depth + 1))
    return body


def _random_layers(rng: random.Random, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    layers = [_random_layer(rng, input_shape, 0)]
    shape = input_shape
    for _ in range(rng.randint(0, 5)):
        with contextlib.suppress(ShapeError):  # follow the shapes to pick sensible next layers; not what is tested
            shape = walk_shapes(spec(*layers).layers, input_shape, 1).output_shape
        layers.append(_random_layer(rng, shape, 0))
    if rng.random() < 0.85:
        layers += ["flatten", {"type": "linear"}]
    return layers


def _infer_or_error(layers: list[Any], input_shape: tuple[int, ...], n_classes: int) -> Inferred | ShapeError:
    try:
        return infer(layers, input_shape, n_classes, **UNBOUNDED)
    except ShapeError as e:
        return e


@pytest.mark.parametrize("chunk", range(8))
def test_infer_shapes_agrees_with_torch_on_random_layer_lists(chunk: int) -> None:
    """For each random list: both accept it, with the same output shape and parameter count (and the model runs
    forward and backward in both modes), or both refuse it at the same layer."""
    valid = invalid = 0
    for case in range(60):
        rng = random.Random(chunk * 1000 + case)
        input_shape, n_classes = rng.choice(INPUT_SHAPES), rng.randint(2, 7)
        layers = _random_layers(rng, input_shape)
        stored = spec(*layers).model_dump(mode="json")["layers"]  # what the worker receives
        pure = _infer_or_error(layers, input_shape, n_classes)
        try:
            model = build_sequential({"layers": stored}, input_shape, n_classes)
        except LayerError as e:
            assert isinstance(pure, ShapeError), (layers, input_shape, e)
            assert pure.loc == e.loc, (layers, input_shape, pure, e)
            invalid += 1
            continue
        assert isinstance(pure, Inferred), (layers, input_shape, pure)
        assert pure.n_parameters == count_parameters(model), (layers, input_shape)
        for train in (True, False):
            model.train(train)
            out = model(torch.randn(3, *input_shape))
            assert out.shape == (3, *pure.output_shape) == (3, n_classes), (layers, input_shape)
        out.sum().backward()  # the eval forward: batchnorm on running statistics, dropout off
        valid += 1
    assert valid >= 15 and invalid >= 5, (valid, invalid)  # both sides of the comparison are exercised
