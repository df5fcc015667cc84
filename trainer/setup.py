"""A run's start, written once for every path that trains one: device, seed -> model -> optimizer -> data order.

trainer.train, the lr range test and the fused engine's members all start here, so a run that differs
only in optimizer or schedule starts from the same weights and sees the same batches wherever it trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from trainer.checkpoint import Checkpoint
from trainer.config import RunConfig
from trainer.data import Dataset, load_dataset
from trainer.models import build_model, count_parameters
from trainer.optim import Optimizer, build_optimizer

logger = logging.getLogger(__name__)


def resolve_device(requested: str = "auto") -> torch.device:
    """ "auto" -> CUDA when present, else CPU; an explicit accelerator that is missing is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as e:
        raise ValueError(f"Invalid device: {requested!r}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {requested!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"Device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"Device {requested!r} requested but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"Unsupported device: {requested!r}")
    return device


def initial_model(config: RunConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The run's model before training: the seed fixes the initial weights (built in the default dtype)."""
    torch.manual_seed(config.seed)
    return build_model(config.model, input_shape, n_classes)


def data_order(config: RunConfig, start: Checkpoint | None = None) -> torch.Generator:
    """Draws each epoch's permutation: a generator of its own, so the same seed gives the same batches whatever
    the model drew at init; from a checkpoint, where the run left it."""
    order = torch.Generator().manual_seed(config.seed)
    if start is not None:
        order.set_state(start.data_generator_state)
    return order


@dataclass
class RunSetup:
    data: Dataset  # the run's split, its tensors on the device
    model: nn.Module  # on the device
    optimizer: Optimizer
    order: torch.Generator
    n_parameters: int


def set_up(
    config: RunConfig,
    device: torch.device,
    data_root: Path | None = None,
    start: Checkpoint | None = None,
    lr: float | None = None,
) -> RunSetup:
    """Data on the device (small datasets live there whole: a batch is an index slice, no DataLoader), then
    seed -> model -> optimizer (at `lr` when given, else the config's) -> data order; then, from `start`,
    the weights, optimizer state, data order and random state where the checkpointed run left them."""
    if start is not None and not 0 <= start.epoch <= config.epochs:
        raise ValueError(f"Invalid checkpoint epoch: {start.epoch} (run has {config.epochs} epochs)")
    data = load_dataset(config.dataset, config.data_seed, data_root)
    data = replace(
        data,
        x_train=data.x_train.to(device),  # (N, *input_shape)
        y_train=data.y_train.to(device),  # (N,)
        x_val=data.x_val.to(device),
        y_val=data.y_val.to(device),
    )
    model = initial_model(config, data.input_shape, data.n_classes).to(device)
    optimizer = build_optimizer(
        model.parameters(), config.optimizer if lr is None else replace(config.optimizer, lr=lr)
    )
    n_parameters = count_parameters(model)
    order = data_order(config, start)
    if start is not None:
        model.load_state_dict(start.model_state)
        optimizer.load_state_dict(start.optimizer_state)
        torch.set_rng_state(start.torch_rng_state)
        if device.type == "cuda" and start.cuda_rng_state is not None:
            torch.cuda.set_rng_state(start.cuda_rng_state, device)
        logger.info("resuming from epoch %d", start.epoch)
    return RunSetup(data, model, optimizer, order, n_parameters)
