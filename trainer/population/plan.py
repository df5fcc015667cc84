"""Which runs can share one fused population, and how they split into groups that step together.

why_not_fusable is the one decision; the service's torch-free copy of its per-run part (a model the engine
stacks, no dropout) is lrlab's fusable_spec, held to it by tests/trainer/test_plan.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer.config import ModelConfig, RunConfig
from trainer.optimizers import OPTIMIZERS, declaration_of

# Models whose members the fused path can stack: MLPs by batched matmul (stack.py); cnn and resnet by
# grouped convolutions, their BatchNorm running statistics stacked per member (functional.py).
FUSABLE_MODELS = frozenset({"mlp", "cnn", "resnet"})


def why_not_fusable_model(model: ModelConfig) -> str | None:
    """None when the engine can stack members of this model, else why not: what one run can tell alone."""
    if model.name not in FUSABLE_MODELS:
        return f"model {model.name!r} is not fusable (fusable models: {sorted(FUSABLE_MODELS)})"
    if model.params.get("dropout", 0.0):
        # the reference draws each run's dropout masks from the global generator after its own
        # torch.manual_seed(seed); one stacked forward cannot replay K such streams
        return "dropout is not fusable: each run's masks come from its own global random stream"
    return None


def why_not_fusable(configs: Sequence[RunConfig]) -> str | None:
    """None when the runs can train as one population (in one or more groups), else the reason.

    Same dataset (name or path, image_size, val_fraction) and the same fusable model spec (an MLP without
    dropout, a cnn or a resnet). Different optimizers, hyperparameters, schedules, seeds, batch sizes,
    epochs, patience and divergence settings are all allowed: plan_groups puts members that cannot step
    together into separate groups, and members that finish early drop out of their group.
    """
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
    reason = why_not_fusable_model(first.model)
    if reason is not None:
        return reason
    for i, config in enumerate(configs):
        if config.optimizer.name not in OPTIMIZERS:
            return f"member {i} has unknown optimizer {config.optimizer.name!r}"
    return None


def fusable(configs: Sequence[RunConfig]) -> bool:
    """why_not_fusable(configs) is None."""
    return why_not_fusable(configs) is None


def plan_groups(configs: Sequence[RunConfig]) -> list[list[int]]:
    """Member indices grouped by (optimizer, its structure: flags and state kept, batch_size), in first-seen order."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, config in enumerate(configs):
        cfg = config.optimizer
        declaration = declaration_of(cfg.name)
        structure = declaration.structure(declaration.resolve(cfg.lr, cfg.params))
        groups.setdefault((cfg.name, structure, config.batch_size), []).append(i)
    return list(groups.values())
