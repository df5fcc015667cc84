"""A run between two epochs (Checkpoint), its bytes, and population based training's exploit step on it."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from trainer.optimizers import declaration_of

CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """Everything the loop carries from one epoch to the next, so a resumed run repeats the same epochs."""

    epoch: int  # epochs completed
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]  # trainer.optim.Optimizer.state_dict()
    data_generator_state: Tensor  # draws the next epoch's permutation
    torch_rng_state: Tensor  # the global CPU generator: dropout masks
    cuda_rng_state: Tensor | None  # the device's generator when training on CUDA
    divergence_state: dict[str, Any]
    best_val_loss: float
    epochs_without_improvement: int
    points: list[dict[str, Any]]  # the curve so far, so a resumed result holds every epoch


def checkpoint_to_bytes(ckpt: Checkpoint) -> bytes:
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **{f.name: getattr(ckpt, f.name) for f in fields(ckpt)}}, buffer)
    return buffer.getvalue()


def checkpoint_from_bytes(data: bytes, device: torch.device | str = "cpu") -> Checkpoint:
    # weights_only: a checkpoint is data (tensors, numbers, strings, lists, dicts), never code
    state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    if not isinstance(state, dict) or state.pop("version", None) != CHECKPOINT_VERSION:
        raise ValueError(f"Not a trainer checkpoint of version {CHECKPOINT_VERSION}")
    for key in ("data_generator_state", "torch_rng_state", "cuda_rng_state"):
        if state.get(key) is not None:
            state[key] = state[key].cpu()  # generator states are CPU byte tensors wherever the run is
    return Checkpoint(**state)


def exploit(own: Checkpoint, hyperparameters: Mapping[str, Any], source: Checkpoint | None = None) -> Checkpoint:
    """A population member's start for its next interval: exploit, then explore.

    The result is `own` (its data order, random state, curve and epoch rules stay the member's) with
    `source`'s weights and optimizer state when a source is given (exploit: it copies a better member), and
    `hyperparameters` (torch's names, lr included; the others keep their values) set in the optimizer state,
    which a resumed run takes its hyperparameters from (explore). Values are checked as the optimizer's
    constructor checks them; one that would change which state the optimizer keeps (a flag, a momentum
    crossing zero) is refused, since that state cannot appear or vanish mid-run. Neither input changes;
    the result shares their tensors (a run resuming from it copies them).
    """
    if source is not None and source.epoch != own.epoch:
        raise ValueError(f"Exploit across epochs: source at epoch {source.epoch}, member at {own.epoch}")
    base = own if source is None else source
    state = base.optimizer_state
    declaration = declaration_of(state["name"])
    current = declaration.resolve(state["lr"], state["hyperparameters"])
    merged = {**current, **hyperparameters}
    values = declaration.resolve(merged.pop("lr"), merged)
    if declaration.structure(values) != declaration.structure(current):
        raise ValueError(
            f"Hyperparameters {dict(hyperparameters)} would change the {state['name']} state kept per parameter"
            f" ({declaration.structure(current)} -> {declaration.structure(values)}): it cannot change mid-run"
        )
    lr = values.pop("lr")
    return replace(own, model_state=base.model_state, optimizer_state={**state, "lr": lr, "hyperparameters": values})
