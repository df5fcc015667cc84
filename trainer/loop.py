"""The training loop: a RunConfig in, a TrainResult out, with divergence checks, early stopping and exact resume."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.checkpoint import Checkpoint
from trainer.config import RunConfig
from trainer.divergence import chance_of
from trainer.epochs import Ending, EpochPoint, EpochRules, TrainResult
from trainer.schedules import lr_at, validate_schedule
from trainer.setup import RunSetup, resolve_device, set_up

logger = logging.getLogger(__name__)


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
    """Train one run, from its first epoch or from `start`, reporting each epoch to on_epoch.

    should_stop is asked after each epoch but the last; on_checkpoint receives a Checkpoint after each epoch
    for which checkpoint_due(epoch) says so (building one clones the weights and optimizer state: it asks first).
    """
    t_run = time.perf_counter()
    device = resolve_device(device) if isinstance(device, str) else device
    validate_schedule(config.schedule, config.optimizer.lr, config.epochs)
    run = set_up(config, device, data_root, start)
    rules = EpochRules.start(config, chance_of(run.data.y_train, run.data.n_classes), start)

    def save() -> None:
        epoch = rules.points[-1].epoch
        if on_checkpoint is not None and (checkpoint_due is None or checkpoint_due(epoch)):
            model_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
            on_checkpoint(rules.checkpoint(model_state, run.optimizer.state_dict(), run.order, device))

    first_epoch = start.epoch + 1 if start is not None else 1
    ending: Ending | None = None
    if rules.stopped_before():  # the checkpointed run had already stopped early: nothing left to train
        ending, first_epoch = "early_stopped", config.epochs + 1
    for epoch in range(first_epoch, config.epochs + 1):
        t_epoch = time.perf_counter()
        lr = lr_at(config.schedule, config.optimizer.lr, epoch, config.epochs)
        run.optimizer.lr = lr
        train_loss, train_accuracy = _train_epoch(run, config.batch_size, rules, device)
        val_loss, val_accuracy = evaluate(run.model, run.data.x_val, run.data.y_val)
        point = EpochPoint(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, time.perf_counter() - t_epoch)
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
        ending = rules.end_epoch(point, save, should_stop)
        if ending is not None:
            break
    return rules.result(ending or "finished", time.perf_counter() - t_run, run.n_parameters, device)


def _train_epoch(run: RunSetup, batch_size: int, rules: EpochRules, device: torch.device) -> tuple[float, float]:
    """One pass over the training set in the epoch's own order: (mean loss, accuracy) over the samples seen.

    A step whose loss diverges (rules.step) ends the epoch before its update.
    """
    model, x_train, y_train = run.model, run.data.x_train, run.data.y_train
    n_train = len(y_train)
    model.train()
    perm = torch.randperm(n_train, generator=run.order).to(device)  # (N,)
    # Few ops per step (for a small model a step is mostly per-op dispatch): each step's predictions go into
    # one buffer, compared with the labels once per epoch. With the divergence rules on, the loss comes to the
    # host every step anyway: it is summed there, in float64 as the device would (same bits), with no tensor op.
    predicted = torch.empty(n_train, dtype=torch.int64, device=device)  # (N,) in the epoch's order
    watch = rules.watches_steps
    loss_sum: Any = 0.0 if watch else torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for i in range(0, n_train, batch_size):
        idx = perm[i : i + batch_size]
        xb, yb = x_train[idx], y_train[idx]  # (B, *input_shape), (B,)
        logits = model(xb)  # (B, C)
        loss = F.cross_entropy(logits, yb)
        torch.argmax(logits.detach(), dim=1, out=predicted[i : i + len(idx)])
        seen += len(idx)
        if watch:
            value = loss.item()
            loss_sum += value * len(idx)
            if rules.step(value):
                break  # no update from a diverged loss
        else:
            loss_sum += loss.detach().double() * len(idx)
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
    correct = int((predicted[:seen] == y_train[perm[:seen]]).sum())
    return (loss_sum if watch else loss_sum.item()) / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode (dropout off, BatchNorm running stats)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])  # (B, C)
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").double()
        correct += (logits.argmax(dim=1) == y[i : i + batch_size]).sum()
    model.train()
    return loss_sum.item() / len(y), correct.item() / len(y)
