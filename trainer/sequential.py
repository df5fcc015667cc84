"""A model described as a list of layers (the `sequential` spec) built as a torch.nn.Sequential.

Each layer is a dict with torch's names and arguments, {"type": "conv2d", "out_channels": 16, "kernel_size": 3},
or a bare type ("relu"). The dimension of batchnorm and the pools follows the input: a per-sample (C, L) or
(C,) input takes the 1-D torch layer, (C, H, W) the 2-D one. The shape rules (lrlab/schemas/layers.py checks
the same ones without torch) are torch's own: every layer is tried on a meta tensor of its input's shape
before it is built, so a list that does not fit fails with torch's message and the layer's place, and no
memory or random draws are spent on it. The real layers are built in list order, so the seed fixes the
initial weights as it fixes an nn.Sequential written by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

LAYER_TYPES = (
    "linear",
    "conv1d",
    "conv2d",
    "batchnorm",
    "layernorm",
    "relu",
    "gelu",
    "tanh",
    "maxpool",
    "avgpool",
    "adaptive_avgpool",
    "dropout",
    "flatten",
    "residual",
)
# The arguments each type takes: name -> (default, or REQUIRED).
REQUIRED = object()
ARGUMENTS: dict[str, dict[str, Any]] = {
    "linear": {"out_features": None, "bias": True},
    "conv1d": {"out_channels": REQUIRED, "kernel_size": REQUIRED, "stride": 1, "padding": 0, "bias": True},
    "conv2d": {"out_channels": REQUIRED, "kernel_size": REQUIRED, "stride": 1, "padding": 0, "bias": True},
    "batchnorm": {},
    "layernorm": {"normalized_shape": None},
    "relu": {},
    "gelu": {"approximate": "none"},
    "tanh": {},
    "maxpool": {"kernel_size": REQUIRED, "stride": None, "padding": 0},
    "avgpool": {"kernel_size": REQUIRED, "stride": None, "padding": 0},
    "adaptive_avgpool": {"output_size": REQUIRED},
    "dropout": {"p": 0.5},
    "flatten": {},
    "residual": {"layers": REQUIRED},
}


class Residual(nn.Module):
    """x + body(x): body keeps the shape of its input."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class LayerError(ValueError):
    """A layer list that cannot be built; `loc` is the layer's place, ("layers", 3, "layers", 1)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.loc, self.msg = loc, msg


def build_sequential(params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """The `sequential` model of a run spec: params {"layers": [...]}; the last linear layer may leave out
    out_features (it is n_classes), and the model must end with n_classes values per sample."""
    unknown = set(params) - {"layers"}
    if unknown:
        raise ValueError(f"Unknown parameter for model 'sequential': {sorted(unknown)} (allowed: ['layers'])")
    layers = params.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"Invalid layers: {layers!r} (need a non-empty list)")
    specs = [_spec(layer, ("layers", i)) for i, layer in enumerate(layers)]
    linear = [i for i, spec in enumerate(specs) if spec["type"] == "linear"]
    builder = _Builder(n_classes, linear[-1] if linear else None)
    modules, shape = builder.sequence(specs, tuple(input_shape), ("layers",))
    if shape != (n_classes,):
        raise LayerError(
            ("layers", len(specs) - 1),
            f"the model ends with shape {shape} per sample; a classifier over {n_classes} classes must end with"
            f" ({n_classes},), e.g. flatten then linear",
        )
    model = nn.Sequential(*modules)
    if not any(p.requires_grad for p in model.parameters()):
        raise LayerError(("layers",), "the model has no parameters to train: add a linear or convolution layer")
    return model


def _spec(layer: Any, loc: tuple[str | int, ...]) -> dict[str, Any]:
    """A layer's arguments with their defaults filled in; LayerError for an unknown type or argument."""
    if isinstance(layer, str):
        layer = {"type": layer}
    if not isinstance(layer, dict) or layer.get("type") not in ARGUMENTS:
        got = layer.get("type") if isinstance(layer, dict) else layer
        raise LayerError(loc, f"unknown layer type {got!r} (choose from {list(LAYER_TYPES)})")
    allowed = ARGUMENTS[layer["type"]]
    unknown = set(layer) - set(allowed) - {"type"}
    if unknown:
        raise LayerError(loc, f"{layer['type']} takes no {sorted(unknown)} (it takes {sorted(allowed)})")
    spec = {"type": layer["type"]}
    for name, default in allowed.items():
        value = layer.get(name, default)
        if value is REQUIRED:
            raise LayerError(loc, f"{layer['type']} needs {name}")
        spec[name] = value
    for name in ("out_channels", "kernel_size", "stride", "padding", "output_size", "out_features"):
        value = spec.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise LayerError(loc, f"Invalid {name}: {value!r} (need a non-negative integer)")
    if layer["type"] == "residual":
        if not isinstance(spec["layers"], list) or not spec["layers"]:
            raise LayerError(loc, f"Invalid layers: {spec['layers']!r} (need a non-empty list)")
        spec["layers"] = [_spec(inner, (*loc, "layers", j)) for j, inner in enumerate(spec["layers"])]
    return spec


class _Builder:
    def __init__(self, n_classes: int, last_linear: int | None) -> None:
        self.n_classes, self.last_linear = n_classes, last_linear

    def sequence(
        self, specs: Sequence[dict[str, Any]], shape: tuple[int, ...], loc: tuple[str | int, ...]
    ) -> tuple[list[nn.Module], tuple[int, ...]]:
        modules = []
        for i, spec in enumerate(specs):
            here = (*loc, i)
            module, shape = self.layer(spec, shape, here, top=len(loc) == 1 and i == self.last_linear)
            modules.append(module)
        return modules, shape

    def layer(
        self, spec: dict[str, Any], shape: tuple[int, ...], loc: tuple[str | int, ...], top: bool
    ) -> tuple[nn.Module, tuple[int, ...]]:
        kind = spec["type"]
        if kind == "residual":
            modules, out = self.sequence(spec["layers"], shape, (*loc, "layers"))
            if out != shape:
                raise LayerError(
                    loc, f"residual: its layers turn {shape} into {out}; x + layers(x) needs the same shape"
                )
            return Residual(nn.Sequential(*modules)), shape
        if kind == "linear" and spec["out_features"] is None and not top:
            raise LayerError(
                loc, "only the model's last linear layer may omit out_features (it is the number of classes)"
            )
        make = self.maker(spec, shape, loc)
        try:
            with torch.device("meta"):  # no memory, no random draws: only the shape rules run
                trial = make()
            out = trial(torch.empty(2, *shape, device="meta"))  # a batch of 2: BatchNorm wants more than 1 value
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            raise LayerError(loc, f"{kind} cannot take input of shape {shape}: {e}") from e
        return make(), tuple(out.shape[1:])

    def maker(
        self, spec: dict[str, Any], shape: tuple[int, ...], loc: tuple[str | int, ...]
    ) -> Callable[[], nn.Module]:
        """A constructor of the torch layer for this input shape (the 1-D or 2-D variant, the input's sizes)."""
        kind = spec["type"]

        def needs(ranks: tuple[int, ...], layout: str) -> None:
            # checked here, not left to torch: a 1-D pool or batchnorm would take a batch of (C,) samples as one
            # unbatched (C, L) sample and run without an error
            if len(shape) not in ranks:
                raise LayerError(loc, f"{kind} cannot take input of shape {shape}: it needs {layout} per sample")

        if kind == "linear":
            out_features = self.n_classes if spec["out_features"] is None else spec["out_features"]
            return lambda: nn.Linear(shape[-1], out_features, bias=spec["bias"])
        if kind in ("conv1d", "conv2d"):
            conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
            needs((2,) if kind == "conv1d" else (3,), "(C, L)" if kind == "conv1d" else "(C, H, W)")
            args = (shape[0], spec["out_channels"], spec["kernel_size"])
            return lambda: conv(*args, stride=spec["stride"], padding=spec["padding"], bias=spec["bias"])
        if kind == "batchnorm":
            needs((1, 2, 3), "(C,), (C, L) or (C, H, W)")
            norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            return lambda: norm(shape[0])
        if kind == "layernorm":
            normalized = spec["normalized_shape"] or [shape[-1]]
            if len(normalized) > len(shape) or tuple(shape[-len(normalized) :]) != tuple(normalized):
                raise LayerError(
                    loc,
                    f"layernorm cannot take input of shape {shape}: normalized_shape {list(normalized)} must equal"
                    " the input's trailing axes",
                )
            return lambda: nn.LayerNorm(normalized)
        if kind in ("maxpool", "avgpool", "adaptive_avgpool"):
            needs((2, 3), "(C, L) or (C, H, W)")
            two = len(shape) == 3
            if kind == "adaptive_avgpool":
                adaptive = nn.AdaptiveAvgPool2d if two else nn.AdaptiveAvgPool1d
                return lambda: adaptive(spec["output_size"])
            pool: type[nn.Module]
            if kind == "maxpool":
                pool = nn.MaxPool2d if two else nn.MaxPool1d
            else:
                pool = nn.AvgPool2d if two else nn.AvgPool1d
            return lambda: pool(spec["kernel_size"], stride=spec["stride"], padding=spec["padding"])
        if kind == "gelu":
            return lambda: nn.GELU(approximate=spec["approximate"])
        if kind == "dropout":
            return lambda: nn.Dropout(spec["p"])
        simple: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "flatten": nn.Flatten}
        return simple[kind]
