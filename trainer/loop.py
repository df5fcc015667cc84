"""The training loop: a RunConfig in, a TrainResult out, with divergence checks, early stopping and exact resume."""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import RunConfig
from trainer.data import load_dataset
from trainer.divergence import DivergenceTracker, chance_of
from trainer.models import build_model, count_parameters
from trainer.optim import build_optimizer
from trainer.schedules import lr_at, validate_schedule

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass
class EpochPoint:
    epoch: int
    train_loss: float  # mean over the epoch's samples; may be nan/inf (stored as NULL plus a flag)
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # the lr used during this epoch
    seconds: float  # wall time of the epoch, validation included


@dataclass
class TrainResult:
    status: str  # "succeeded" | "diverged" | "stopped"
    points: list[EpochPoint]
    diverged_at: int | None
    reason: str | None
    early_stopped: bool
    seconds: float
    n_parameters: int
    device: str


@dataclass
class Checkpoint:
    """Everything the loop carries from one epoch to the next, so a resumed run repeats the same epochs."""

    epoch: int  # epochs completed
    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    data_generator_state: Tensor  # draws the next epoch's permutation
    torch_rng_state: Tensor  # the global CPU generator: dropout masks
    cuda_rng_state: Tensor | None  # the device's generator when training on CUDA
    divergence_state: dict[str, Any]
    best_val_loss: float
    epochs_without_improvement: int
    points: list[dict[str, Any]]  # the curve so far, so a resumed result holds every epoch


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


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode (dropout off, BatchNorm running stats)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])  # (B, K)
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").double()
        correct += (logits.argmax(dim=1) == y[i : i + batch_size]).sum()
    model.train()
    return loss_sum.item() / len(y), correct.item() / len(y)


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


def train(
    config: RunConfig,
    *,
    device: torch.device | str = "cpu",
    data_root: Path | None = None,
    on_epoch: Callable[[EpochPoint], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    start: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    checkpoint_due: Callable[[int], bool] | None = None,
) -> TrainResult:
    t_run = time.perf_counter()
    device = resolve_device(device) if isinstance(device, str) else device
    validate_schedule(config.schedule, config.optimizer.lr, config.epochs)

    # data: small datasets live on the device whole; a batch is an index slice, no DataLoader
    data = load_dataset(config.dataset, config.data_seed, data_root)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)  # (N, *input_shape), (N,)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    n_train = len(y_train)

    # model and optimizer: the seed fixes the initial weights, so runs that differ only in
    # optimizer or schedule start from the same point
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.input_shape, data.n_classes).to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    n_parameters = count_parameters(model)
    # data order has its own generator: same seed, same batches, whatever the model draws at init
    order = torch.Generator().manual_seed(config.seed)
    tracker = DivergenceTracker(
        config.divergence.factor, config.divergence.smoothing, chance_of(data.y_train, data.n_classes)
    )
    best_val_loss, stale_epochs = math.inf, 0
    points: list[EpochPoint] = []
    first_epoch = 1

    if start is not None:
        if not 0 <= start.epoch <= config.epochs:
            raise ValueError(f"Invalid checkpoint epoch: {start.epoch} (run has {config.epochs} epochs)")
        model.load_state_dict(start.model_state)
        optimizer.load_state_dict(start.optimizer_state)
        order.set_state(start.data_generator_state)
        torch.set_rng_state(start.torch_rng_state)
        if device.type == "cuda" and start.cuda_rng_state is not None:
            torch.cuda.set_rng_state(start.cuda_rng_state, device)
        for key, value in start.divergence_state.items():
            setattr(tracker, key, value)
        best_val_loss, stale_epochs = start.best_val_loss, start.epochs_without_improvement
        points = [EpochPoint(**p) for p in start.points]
        tracker.replay(points)
        first_epoch = start.epoch + 1
        logger.info("resuming from epoch %d", start.epoch)

    status, reason, diverged_at, early_stopped = "succeeded", None, None, False
    if config.patience is not None and stale_epochs >= config.patience:
        early_stopped, first_epoch = True, config.epochs + 1  # the checkpointed run had already stopped
    for epoch in range(first_epoch, config.epochs + 1):
        t_epoch = time.perf_counter()
        lr = lr_at(config.schedule, config.optimizer.lr, epoch, config.epochs)
        optimizer.lr = lr
        model.train()
        perm = torch.randperm(n_train, generator=order).to(device)  # (N,)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for i in range(0, n_train, config.batch_size):
            idx = perm[i : i + config.batch_size]
            xb, yb = x_train[idx], y_train[idx]  # (B, *input_shape), (B,)
            logits = model(xb)  # (B, K)
            loss = F.cross_entropy(logits, yb)
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.argmax(dim=1) == yb).sum()
            seen += len(idx)
            if config.divergence.enabled:
                reason = tracker.update(loss.item())
                if reason is not None:
                    break  # no update from a diverged loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        val_loss, val_accuracy = evaluate(model, x_val, y_val)
        train_loss, train_accuracy = loss_sum.item() / seen, correct.item() / seen
        point = EpochPoint(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, time.perf_counter() - t_epoch)
        points.append(point)
        if reason is None and config.divergence.enabled:
            reason = tracker.end_epoch(val_loss, val_accuracy)
        logger.info(
            "epoch %d: lr %.3g train_loss %.4f train_acc %.4f val_loss %.4f val_acc %.4f (%.2fs)",
            epoch,
            lr,
            train_loss,
            train_accuracy,
            val_loss,
            val_accuracy,
            point.seconds,
        )
        if on_epoch is not None:
            on_epoch(point)
        if reason is not None:
            status, diverged_at = "diverged", epoch
            logger.warning("diverged in epoch %d: %s", epoch, reason)
            break

        if val_loss < best_val_loss:  # a NaN val_loss never counts as an improvement
            best_val_loss, stale_epochs = val_loss, 0
        else:
            stale_epochs += 1
        # Building a checkpoint clones the weights, the optimizer state and the curve so far: ask first.
        if on_checkpoint is not None and (checkpoint_due is None or checkpoint_due(epoch)):
            on_checkpoint(
                Checkpoint(
                    epoch=epoch,
                    model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
                    optimizer_state=optimizer.state_dict(),
                    data_generator_state=order.get_state(),
                    torch_rng_state=torch.get_rng_state(),
                    cuda_rng_state=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    divergence_state=tracker.state(),
                    best_val_loss=best_val_loss,
                    epochs_without_improvement=stale_epochs,
                    points=[asdict(p) for p in points],
                )
            )
        if config.patience is not None and stale_epochs >= config.patience:
            early_stopped = True
            logger.info("early stop after epoch %d: no val_loss improvement in %d epochs", epoch, stale_epochs)
            break
        # a stop request that arrives during the last epoch comes too late to matter: the run is done
        if should_stop is not None and epoch < config.epochs and should_stop():
            status = "stopped"
            logger.info("stopped on request after epoch %d", epoch)
            break

    return TrainResult(
        status=status,
        points=points,
        diverged_at=diverged_at,
        reason=reason,
        early_stopped=early_stopped,
        seconds=time.perf_counter() - t_run,
        n_parameters=n_parameters,
        device=str(device),
    )
