"""Small classifiers (MLP, CNN, ResNet, a layer list) and plugins' models, built from a ModelConfig for a dataset's
input shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from trainer.config import ModelConfig
from trainer.plugins import build_plugin_model, installed
from trainer.sequential import build_sequential


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"Invalid {key}: {value!r} (need an integer in [{low}, {high}])")
    return value


def _check_keys(name: str, params: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"Unknown parameter for model {name!r}: {sorted(unknown)} (allowed: {sorted(allowed)})")


def _conv_layout(input_shape: tuple[int, ...]) -> tuple[int, int, list[int]]:
    """(conv dims, in channels, spatial sizes): (C, H, W) -> 2-D; (C, L) -> 1-D; a flat (D,) -> 1-D over (1, D)."""
    if len(input_shape) == 3:
        return 2, input_shape[0], list(input_shape[1:])
    if len(input_shape) == 2:
        return 1, input_shape[0], [input_shape[1]]
    if len(input_shape) == 1:
        return 1, 1, [input_shape[0]]
    raise ValueError(f"Convolutional models need input shape (C, H, W), (C, L) or (D,), got {input_shape}")


def _conv_layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    if dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d
    return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d


class Reshape(nn.Module):
    """Gives each sample a fixed shape, e.g. a flat (D,) vector the channel axis (1, D) a Conv1d needs."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)


def build_mlp(params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    _check_keys("mlp", params, {"hidden", "dropout"})
    hidden = params.get("hidden", [128, 128])
    if not isinstance(hidden, list | tuple) or len(hidden) > 16:
        raise ValueError(f"Invalid hidden: {hidden!r} (need a list of at most 16 widths)")
    widths = [_int("hidden", h, 1, 65536) for h in hidden]
    dropout = params.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"Invalid dropout: {dropout!r} (need a number in [0, 1))")

    n_in = 1
    for size in input_shape:
        n_in *= size
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, n_classes))
    return nn.Sequential(*layers)


def build_cnn(params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    _check_keys("cnn", params, {"channels", "depth"})
    channels = _int("channels", params.get("channels", 32), 1, 1024)
    depth = _int("depth", params.get("depth", 2), 1, 16)
    dims, c_in, spatial = _conv_layout(input_shape)
    conv, norm, pool, global_pool = _conv_layers(dims)

    layers: list[nn.Module] = [Reshape((c_in, *spatial))]
    for _ in range(depth):
        layers += [conv(c_in, channels, 3, padding=1, bias=False), norm(channels), nn.ReLU()]
        # halve the resolution while it stays at least 2 wide, so deep nets on 8x8 inputs still work
        if min(spatial) >= 4:
            layers.append(pool(2))
            spatial = [s // 2 for s in spatial]
        c_in = channels
    layers += [global_pool(1), nn.Flatten(), nn.Linear(channels, n_classes)]  # (B, channels) -> (B, K)
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU (He et al. 2016), at constant width."""

    def __init__(self, width: int, dims: int) -> None:
        super().__init__()
        conv, norm, _, _ = _conv_layers(dims)
        self.conv1 = conv(width, width, 3, padding=1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, padding=1, bias=False)
        self.bn2 = norm(width)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(out)))


def build_resnet(params: dict[str, Any], input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    _check_keys("resnet", params, {"width", "blocks"})
    width = _int("width", params.get("width", 16), 1, 512)
    blocks = _int("blocks", params.get("blocks", 2), 1, 32)
    dims, c_in, spatial = _conv_layout(input_shape)
    conv, norm, pool, global_pool = _conv_layers(dims)

    stem = conv(c_in, width, 3, padding=1, bias=False)
    layers: list[nn.Module] = [Reshape((c_in, *spatial)), stem, norm(width), nn.ReLU()]
    if min(spatial) >= 16:
        layers.append(pool(2))  # 32x32 images run the blocks at 16x16: a quarter of the compute
    layers += [BasicBlock(width, dims) for _ in range(blocks)]
    layers += [global_pool(1), nn.Flatten(), nn.Linear(width, n_classes)]  # (B, width) -> (B, K)
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "resnet": build_resnet,
    "sequential": build_sequential,
}


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """One of ours by name, or a plugin's (an entry point of the group lrlab.models installed here)."""
    if n_classes < 2:
        raise ValueError(f"Invalid n_classes: {n_classes}")
    if cfg.name in MODELS:
        return MODELS[cfg.name](cfg.params, tuple(input_shape), n_classes)
    plugins = installed()
    if cfg.name not in plugins.models:
        raise ValueError(f"Unknown model: {cfg.name!r} (choose from {sorted(MODELS) + sorted(plugins.models)})")
    return build_plugin_model(plugins.models[cfg.name], cfg.params, tuple(input_shape), n_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
