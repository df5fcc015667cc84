"""Which runs can share one fused population, and how they split into groups that step together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer.config import OptimizerConfig, RunConfig
from trainer.optim import OPTIMIZER_DEFAULTS

# Models whose members the fused path can stack: MLPs by batched matmul (stack.py); cnn and resnet by
# grouped convolutions, their BatchNorm running statistics stacked per member (functional.py).
FUSABLE_MODELS = frozenset({"mlp", "cnn", "resnet"})


def resolved_hyperparameters(cfg: OptimizerConfig) -> dict[str, Any]:
    """The optimizer's hyperparameters with torch's defaults filled in, lr included."""
    if cfg.name not in OPTIMIZER_DEFAULTS:
        raise ValueError(f"Unknown optimizer: {cfg.name!r} (choose from {sorted(OPTIMIZER_DEFAULTS)})")
    return {**OPTIMIZER_DEFAULTS[cfg.name], **cfg.params, "lr": cfg.lr}


def optimizer_structure(cfg: OptimizerConfig) -> tuple[tuple[str, bool], ...]:
    """The flags that decide which state the optimizer keeps; members that share them can share one update.

    Numbers (lr, momentum, betas, ...) are per-member tensors and may differ. A zero momentum is
    structural for sgd and rmsprop: trainer.optim keeps no momentum buffer then, and torch ignores
    sgd's dampening without one, so a member with a buffer and momentum 0 would not be the same run.
    """
    hp = resolved_hyperparameters(cfg)
    if cfg.name == "sgd":
        return (("nesterov", bool(hp["nesterov"])), ("momentum_buffer", hp["momentum"] != 0))
    if cfg.name == "rmsprop":
        return (("centered", bool(hp["centered"])), ("momentum_buffer", hp["momentum"] > 0))
    if cfg.name in ("adam", "adamw"):
        return (("amsgrad", bool(hp["amsgrad"])),)
    return ()


def why_not_fusable(configs: Sequence[RunConfig]) -> str | None:
    """None when the runs can train as one population (in one or more groups), else the reason."""
    if not configs:
        return None
    first = configs[0]
    for i, config in enumerate(configs[1:], start=1):
        # DatasetConfig equality covers name, path, image_size and val_fraction: the same samples and
        # the same train/val sizes, so every member's epoch has the same batch boundaries
        if config.dataset != first.dataset:
            return f"member {i} trains on {config.dataset}, member 0 on {first.dataset}"
        if config.model != first.model:
            return f"member {i} has model {config.model}, member 0 {first.model}"
    if first.model.name not in FUSABLE_MODELS:
        return f"model {first.model.name!r} is not fusable (fusable models: {sorted(FUSABLE_MODELS)})"
    if first.model.params.get("dropout", 0.0):
        # the reference draws each run's dropout masks from the global generator after its own
        # torch.manual_seed(seed); one stacked forward cannot replay K such streams
        return "dropout is not fusable: each run's masks come from its own global random stream"
    for i, config in enumerate(configs):
        if config.optimizer.name not in OPTIMIZER_DEFAULTS:
            return f"member {i} has unknown optimizer {config.optimizer.name!r}"
    return None


def fusable(configs: Sequence[RunConfig]) -> bool:
    """Same dataset (name or path, image_size, val_fraction) and the same fusable model spec (an MLP
    without dropout, a cnn or a resnet).

    Different optimizers, hyperparameters, schedules, seeds, batch sizes, epochs, patience and
    divergence settings are all allowed: plan_groups puts members that cannot step together into
    separate groups, and members that finish early drop out of their group.
    """
    return why_not_fusable(configs) is None


def plan_groups(configs: Sequence[RunConfig]) -> list[list[int]]:
    """Member indices grouped by (optimizer name, its structural flags, batch_size), in first-seen order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, config in enumerate(configs):
        key = (config.optimizer.name, optimizer_structure(config.optimizer), config.batch_size)
        groups.setdefault(key, []).append(i)
    return list(groups.values())
