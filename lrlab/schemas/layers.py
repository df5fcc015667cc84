"""A model described in the request: the `sequential` layer list, its bounds, and its shapes worked out in pure Python.

Layer types keep torch's names and arguments. The dimension of a convolution is its name's (conv1d, conv2d);
that of batchnorm, the pools and adaptive_avgpool follows the input: a per-sample (C, L) or (C,) input takes
the 1-D torch layer, a (C, H, W) input the 2-D one. infer_shapes follows torch's rules for every layer, so
a list it accepts builds and runs in trainer/sequential.py with the same shapes and parameter count (a test
compares the two over many random lists), and one it refuses names the layer that torch would fail on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from lrlab.schemas.strict import Strict

MAX_LAYERS = 64  # every layer counts, those inside a residual and the residual itself
MAX_DEPTH = 4  # residuals inside residuals
MAX_FEATURES = 65_536
MAX_CHANNELS = 4096
MAX_KERNEL = 64  # kernel_size, stride and padding
MAX_OUTPUT_SIZE = 1024
# What one sample may occupy after any layer, in values: bounds the memory of a request no parameter count sees
# (an adaptive_avgpool to 1024 x 1024 over 4096 channels has no parameters at all).
MAX_ACTIVATION = 1 << 24
# The default of LRLAB_MAX_MODEL_PARAMETERS, which the API passes to infer_shapes.
DEFAULT_MAX_PARAMETERS = 20_000_000

Features = Annotated[int, Field(ge=1, le=MAX_FEATURES)]
Channels = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
Kernel = Annotated[int, Field(ge=1, le=MAX_KERNEL, description="Square: the same size along every spatial axis.")]
Stride = Annotated[int, Field(ge=1, le=MAX_KERNEL)]
Padding = Annotated[int, Field(ge=0, le=MAX_KERNEL, description="Zeros on each side of every spatial axis.")]


class Linear(Strict):
    """torch.nn.Linear over the last axis: (..., D) -> (..., out_features)."""

    type: Literal["linear"]
    out_features: Features | None = Field(
        None, description="Omit on the model's last linear layer (not inside a residual): the number of classes."
    )
    bias: bool = True


class Conv1d(Strict):
    """torch.nn.Conv1d: (C, L) -> (out_channels, floor((L + 2 padding - kernel_size) / stride) + 1)."""

    type: Literal["conv1d"]
    out_channels: Channels
    kernel_size: Kernel
    stride: Stride = 1
    padding: Padding = 0
    bias: bool = True


class Conv2d(Strict):
    """torch.nn.Conv2d with square kernels: (C, H, W) -> (out_channels, H', W'), each axis as conv1d's L."""

    type: Literal["conv2d"]
    out_channels: Channels
    kernel_size: Kernel
    stride: Stride = 1
    padding: Padding = 0
    bias: bool = True


class BatchNorm(Strict):
    """torch.nn.BatchNorm1d on (C,) or (C, L), BatchNorm2d on (C, H, W); C from the input. Shape unchanged."""

    type: Literal["batchnorm"]


class LayerNorm(Strict):
    """torch.nn.LayerNorm over the trailing axes named by normalized_shape (default: the last axis)."""

    type: Literal["layernorm"]
    normalized_shape: list[Annotated[int, Field(ge=1, le=MAX_FEATURES)]] | None = Field(
        None, min_length=1, max_length=3, description="Must equal the input's trailing axes; default [last axis]."
    )


class Relu(Strict):
    """torch.nn.ReLU: max(x, 0), elementwise."""

    type: Literal["relu"]


class Gelu(Strict):
    """torch.nn.GELU (approximate: torch's "none" or "tanh"), elementwise."""

    type: Literal["gelu"]
    approximate: Literal["none", "tanh"] = "none"


class Tanh(Strict):
    """torch.nn.Tanh, elementwise."""

    type: Literal["tanh"]


class MaxPool(Strict):
    """torch.nn.MaxPool1d on (C, L), MaxPool2d on (C, H, W); each spatial axis as a convolution's."""

    type: Literal["maxpool"]
    kernel_size: Kernel
    stride: Stride | None = Field(None, description="Default kernel_size, as torch's.")
    padding: Padding = Field(0, description="At most half of kernel_size, as torch requires.")


class AvgPool(Strict):
    """torch.nn.AvgPool1d on (C, L), AvgPool2d on (C, H, W); each spatial axis as a convolution's."""

    type: Literal["avgpool"]
    kernel_size: Kernel
    stride: Stride | None = Field(None, description="Default kernel_size, as torch's.")
    padding: Padding = Field(0, description="At most half of kernel_size, as torch requires.")


class AdaptiveAvgPool(Strict):
    """torch.nn.AdaptiveAvgPool1d on (C, L) -> (C, output_size), AdaptiveAvgPool2d on (C, H, W) -> (C, o, o)."""

    type: Literal["adaptive_avgpool"]
    output_size: int = Field(ge=1, le=MAX_OUTPUT_SIZE)


class Dropout(Strict):
    """torch.nn.Dropout. A model with dropout trains separately, never fused: each run draws its own masks."""

    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1, allow_inf_nan=False)


class Flatten(Strict):
    """torch.nn.Flatten: every axis of a sample into one, (C, H, W) -> (C * H * W,)."""

    type: Literal["flatten"]


class Residual(Strict):
    """x + layers(x): the nested list's output shape must equal its input's."""

    type: Literal["residual"]
    # Its JSON schema names the item type in words: a schema that refers to itself is split into an input and an
    # output copy of every schema around it (RunSpec-Input, RunSpec-Output) in the OpenAPI document.
    layers: Annotated[
        list[Layer],
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_LAYERS,
                "items": {"type": "object", "description": "A layer of any type a sequential model's list takes."},
            }
        ),
    ] = Field(min_length=1, max_length=MAX_LAYERS)


def _from_type(value: Any) -> Any:
    """ "relu" is short for {"type": "relu"}."""
    return {"type": value} if isinstance(value, str) else value


Layer = Annotated[
    Linear
    | Conv1d
    | Conv2d
    | BatchNorm
    | LayerNorm
    | Relu
    | Gelu
    | Tanh
    | MaxPool
    | AvgPool
    | AdaptiveAvgPool
    | Dropout
    | Flatten
    | Residual,
    Field(discriminator="type"),
    BeforeValidator(_from_type),
]
Residual.model_rebuild()

LAYER_SCHEMAS: dict[str, type[Strict]] = {
    "linear": Linear,
    "conv1d": Conv1d,
    "conv2d": Conv2d,
    "batchnorm": BatchNorm,
    "layernorm": LayerNorm,
    "relu": Relu,
    "gelu": Gelu,
    "tanh": Tanh,
    "maxpool": MaxPool,
    "avgpool": AvgPool,
    "adaptive_avgpool": AdaptiveAvgPool,
    "dropout": Dropout,
    "flatten": Flatten,
    "residual": Residual,
}


class SequentialSpec(Strict):
    """A model described layer by layer, trained as torch.nn.Sequential. The input shape comes from the dataset;
    the model must end with one value per class, e.g. `["flatten", {"type": "linear"}]`."""

    name: Literal["sequential"]
    layers: list[Layer] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        description=(
            f"At most {MAX_LAYERS} layers in all (nested ones included), residuals nested at most {MAX_DEPTH} deep,"
            f" at most {MAX_ACTIVATION} values per sample after any layer, and at most LRLAB_MAX_MODEL_PARAMETERS"
            f" parameters (default {DEFAULT_MAX_PARAMETERS}). Shapes are checked at submission when the dataset's"
            " input shape is known (built-in and uploaded datasets), otherwise by the worker."
        ),
    )

    @model_validator(mode="after")
    def _bounded(self) -> SequentialSpec:
        total = count_layers(self.layers)
        if total > MAX_LAYERS:
            raise ValueError(f"{total} layers in all (nested ones included); at most {MAX_LAYERS}")
        if depth(self.layers) > MAX_DEPTH:
            raise ValueError(f"residuals nested {depth(self.layers)} deep; at most {MAX_DEPTH}")
        return self


def count_layers(layers: Sequence[Layer]) -> int:
    return sum(1 + (count_layers(layer.layers) if isinstance(layer, Residual) else 0) for layer in layers)


def depth(layers: Sequence[Layer]) -> int:
    """How deep residuals nest: 0 for a list without one."""
    return max((1 + depth(layer.layers) for layer in layers if isinstance(layer, Residual)), default=0)


NO_PARAMETERS = "the model has no parameters to train: add a linear or convolution layer"
OMITTED_OUT_FEATURES = "only the model's last linear layer may omit out_features (it is the number of classes)"

# --- shapes -------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]
Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer that cannot take its input. loc is relative to the model: ("layers", 3) or ("layers", 3, "layers",
    1) inside a residual; ("layers",) for the model as a whole (too many parameters)."""

    def __init__(self, loc: Loc, msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg = loc, msg


@dataclass(frozen=True)
class Inferred:
    """What a valid layer list builds: each sample's output shape and the number of trainable parameters."""

    output_shape: Shape
    n_parameters: int


def shape_text(shape: Shape) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"


def infer_shapes(
    layers: Sequence[Layer],
    input_shape: Sequence[int],
    n_classes: int,
    *,
    max_parameters: int = DEFAULT_MAX_PARAMETERS,
    max_activation: int = MAX_ACTIVATION,
) -> Inferred:
    """Walk the layers from one sample's input shape as torch would; ShapeError at the first layer that cannot
    take its input, at a model that does not end with (n_classes,), or past the bounds."""
    inferred = walk_shapes(layers, input_shape, n_classes, max_activation=max_activation)
    if inferred.output_shape != (n_classes,):
        raise ShapeError(
            ("layers", len(layers) - 1),
            f"the model ends with shape {shape_text(inferred.output_shape)} per sample; a classifier over"
            f" {n_classes} classes must end with ({n_classes},), e.g. flatten then linear",
        )
    if inferred.n_parameters == 0:
        raise ShapeError(("layers",), NO_PARAMETERS)
    if inferred.n_parameters > max_parameters:
        raise ShapeError(
            ("layers",),
            f"the model has {inferred.n_parameters:,} parameters; at most {max_parameters:,}"
            " (LRLAB_MAX_MODEL_PARAMETERS)",
        )
    return inferred


def walk_shapes(
    layers: Sequence[Layer], input_shape: Sequence[int], n_classes: int, *, max_activation: int = MAX_ACTIVATION
) -> Inferred:
    """What the layers make of one sample of input_shape, whatever it ends with; ShapeError at the first layer
    that cannot take its input."""
    walk = _Walk(n_classes, _last_linear(layers), max_activation)
    shape = walk.layers(layers, tuple(input_shape), ("layers",))
    return Inferred(shape, walk.n_parameters)


def _last_linear(layers: Sequence[Layer]) -> int | None:
    """The index of the top-level list's last linear layer: the only one that may omit out_features."""
    linear = [i for i, layer in enumerate(layers) if isinstance(layer, Linear)]
    return linear[-1] if linear else None


class _Walk:
    def __init__(self, n_classes: int, last_linear: int | None, max_activation: int) -> None:
        self.n_classes, self.last_linear, self.max_activation = n_classes, last_linear, max_activation
        self.n_parameters = 0

    def layers(self, layers: Sequence[Layer], shape: Shape, loc: Loc) -> Shape:
        for i, layer in enumerate(layers):
            here = (*loc, i)
            shape = self.layer(layer, shape, here, top=len(loc) == 1 and i == self.last_linear)
            if math.prod(shape) > self.max_activation:
                raise ShapeError(
                    here,
                    f"{layer.type} outputs {shape_text(shape)}, {math.prod(shape):,} values per sample; at most"
                    f" {self.max_activation:,}",
                )
        return shape

    def layer(self, layer: Layer, shape: Shape, loc: Loc, top: bool) -> Shape:
        def fail(reason: str) -> ShapeError:
            return ShapeError(loc, f"{layer.type} cannot take input of shape {shape_text(shape)}: {reason}")

        match layer:
            case Linear():
                out = layer.out_features
                if out is None:
                    if not top:
                        raise ShapeError(loc, OMITTED_OUT_FEATURES)
                    out = self.n_classes
                self.n_parameters += shape[-1] * out + (out if layer.bias else 0)
                return (*shape[:-1], out)
            case Conv1d() | Conv2d():
                dims = 1 if isinstance(layer, Conv1d) else 2
                if len(shape) != dims + 1:
                    layout = "(C, L)" if dims == 1 else "(C, H, W)"
                    raise fail(f"it needs {layout} per sample")
                spatial = [_window(s, layer.kernel_size, layer.stride, layer.padding) for s in shape[1:]]
                if min(spatial) < 1:
                    raise fail(
                        f"kernel_size {layer.kernel_size} is larger than the input padded by {layer.padding}"
                        f" ({' x '.join(str(s + 2 * layer.padding) for s in shape[1:])})"
                    )
                self.n_parameters += layer.out_channels * shape[0] * layer.kernel_size**dims
                self.n_parameters += layer.out_channels if layer.bias else 0
                return (layer.out_channels, *spatial)
            case BatchNorm():
                if not 1 <= len(shape) <= 3:
                    raise fail("batchnorm needs (C,), (C, L) or (C, H, W) per sample")
                self.n_parameters += 2 * shape[0]
                return shape
            case LayerNorm():
                normalized = tuple(layer.normalized_shape or shape[-1:])
                if len(normalized) > len(shape) or shape[-len(normalized) :] != normalized:
                    raise fail(f"normalized_shape {list(normalized)} must equal the input's trailing axes")
                self.n_parameters += 2 * math.prod(normalized)
                return shape
            case MaxPool() | AvgPool():
                if len(shape) not in (2, 3):
                    raise fail("pooling needs (C, L) or (C, H, W) per sample")
                if 2 * layer.padding > layer.kernel_size:
                    raise fail(f"padding {layer.padding} is more than half of kernel_size {layer.kernel_size}")
                stride = layer.stride or layer.kernel_size
                spatial = [_window(s, layer.kernel_size, stride, layer.padding) for s in shape[1:]]
                if min(spatial) < 1:
                    raise fail(
                        f"kernel_size {layer.kernel_size} is larger than the input padded by {layer.padding}"
                        f" ({' x '.join(str(s + 2 * layer.padding) for s in shape[1:])})"
                    )
                return (shape[0], *spatial)
            case AdaptiveAvgPool():
                if len(shape) not in (2, 3):
                    raise fail("adaptive_avgpool needs (C, L) or (C, H, W) per sample")
                return (shape[0], *[layer.output_size] * (len(shape) - 1))
            case Flatten():
                return (math.prod(shape),)
            case Residual():
                inner = self.layers(layer.layers, shape, (*loc, "layers"))
                if inner != shape:
                    raise ShapeError(
                        loc,
                        f"residual: its layers turn {shape_text(shape)} into {shape_text(inner)}; x + layers(x) needs"
                        " the same shape",
                    )
                return shape
            case _:  # relu, gelu, tanh, dropout: elementwise
                return shape


def _window(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling window along one axis (torch's floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1
