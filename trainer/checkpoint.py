"""A run between two epochs (Checkpoint) and its bytes."""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

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
