"""Which runs can share one fused population, and how they split into groups that step together.

why_not_fusable is the one decision; the service's torch-free copy of its per-run part (a model the engine
stacks, no dropout) is lrlab's fusable_spec, held to it by tests/trainer/test_plan.py. A plugin's model passes
the per-run part (nothing about it is known without building it); with try_stacking the rule builds two
members of any model that is not one of the three the engine was written for and tries the fused path on them
(trainer.population.stackable): the worker does that before it fuses a pack, and train_population always.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig, RunConfig
from trainer.data import load_dataset
from trainer.models import build_model
from trainer.optimizers import OPTIMIZERS, declaration_of
from trainer.population.stackable import why_not_stackable

# Our models whose members the fused path can stack: MLPs by batched matmul (stack.py); cnn, resnet and
# layer lists by grouped convolutions, their BatchNorm running statistics stacked per member, or by vmap over
# the layers grouping does not know (functional.py).
FUSABLE_MODELS = frozenset({"mlp", "cnn", "resnet", "sequential"})  # all of ours: any other name is a plugin's
# Stacked by code written for them (and tested member by member): no need to try them.
KNOWN_STACKS = frozenset({"mlp", "cnn", "resnet"})
NO_DROPOUT = "dropout is not fusable: each run's masks come from its own global random stream"


def why_not_fusable_model(model: ModelConfig) -> str | None:
    """None when the engine can stack members of this model, else why not: what one run can tell alone."""
    if model.name not in FUSABLE_MODELS:
        return None  # a plugin's: only trying tells (why_not_fusable's try_stacking)
    if model.params.get("dropout", 0.0) or (model.name == "sequential" and _has_dropout(model.params["layers"])):
        # the reference draws each run's dropout masks from the global generator after its own
        # torch.manual_seed(seed); one stacked forward cannot replay K such streams
        return NO_DROPOUT
    return None


def _has_dropout(layers: Sequence[Any]) -> bool:
    """A dropout layer with p > 0 anywhere in a layer list (p defaults to torch's 0.5)."""
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        if layer.get("type") == "dropout" and layer.get("p", 0.5) != 0:
            return True
        if layer.get("type") == "residual" and _has_dropout(layer.get("layers") or []):
            return True
    return False


def why_not_fusable(
    configs: Sequence[RunConfig], *, try_stacking: bool = False, data_root: Path | None = None
) -> str | None:
    """None when the runs can train as one population (in one or more groups), else the reason.

    Same dataset (name or path, image_size, val_fraction) and the same fusable model spec (an MLP without
    dropout, a cnn, a resnet, a layer list without dropout, a plugin's model). Different optimizers,
    hyperparameters, schedules, seeds, batch sizes, epochs, patience and divergence settings are all allowed:
    plan_groups puts members that cannot step together into separate groups, and members that finish early
    drop out of their group. try_stacking: also build two members of the model on the runs' dataset (under
    data_root) and try the fused path on them, unless the engine has code of its own for the model; an error
    building the model or loading the data is raised.
    """
    reason = _why_not_by_rule(configs)
    if reason is None and try_stacking and configs and configs[0].model.name not in KNOWN_STACKS:
        first = configs[0]
        data = load_dataset(first.dataset, first.data_seed, data_root)
        reason = why_not_stackable(lambda: build_model(first.model, data.input_shape, data.n_classes), data.input_shape)
    return reason


def _why_not_by_rule(configs: Sequence[RunConfig]) -> str | None:
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
