"""A run from epoch to epoch: its points, the rules that end it, and its result; one for trainer.train and the
fused engine alike.

After each epoch the rules are asked in one order: divergence (trainer.divergence: its explosion rule is
fed every training step, its collapse rule here), then patience (early stopping on val_loss), then the
last epoch, then a stop request, which is never asked after the last epoch (it would come too late to
matter). A checkpoint is taken, when one is due, after the patience count is updated and before it is read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from trainer.checkpoint import Checkpoint
from trainer.config import RunConfig
from trainer.divergence import Chance, DivergenceTracker

logger = logging.getLogger(__name__)

Ending = Literal["diverged", "early_stopped", "finished", "stopped"]


@dataclass
class EpochPoint:
    epoch: int
    train_loss: float  # mean over the epoch's samples; may be nan/inf (stored as NULL plus a flag)
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float  # the lr used during this epoch
    seconds: float  # wall time of the epoch, validation included (a fused group's members share theirs)


@dataclass
class TrainResult:
    """What one run came to, trained alone (trainer.train) or as a member of a population (train_population)."""

    status: str  # "succeeded" | "diverged" | "stopped"
    points: list[EpochPoint]
    diverged_at: int | None
    reason: str | None
    early_stopped: bool
    seconds: float  # from the call's start to this run's end
    n_parameters: int
    device: str


@dataclass
class EpochRules:
    """One run's curve and the state its ending rules read, from its first epoch or a checkpoint's."""

    config: RunConfig
    tracker: DivergenceTracker
    label: str = "run"  # names the run in the log: "run", "member 3"
    points: list[EpochPoint] = field(default_factory=list)
    best_val_loss: float = math.inf
    stale_epochs: int = 0  # epochs since val_loss last improved
    reason: str | None = None  # why it diverged, once it has

    @classmethod
    def start(cls, config: RunConfig, chance: Chance, start: Checkpoint | None, label: str = "run") -> EpochRules:
        """`chance`: the scores of guessing the training labels' frequencies (the collapse rule reads them)."""
        tracker = DivergenceTracker(config.divergence.factor, config.divergence.smoothing, chance)
        rules = cls(config, tracker, label)
        if start is not None:
            for key, value in start.divergence_state.items():
                setattr(tracker, key, value)
            rules.best_val_loss, rules.stale_epochs = start.best_val_loss, start.epochs_without_improvement
            rules.points = [EpochPoint(**p) for p in start.points]
            tracker.replay(rules.points)
        return rules

    @property
    def watches_steps(self) -> bool:
        """Whether each training step's loss goes to step() (the divergence rules are on)."""
        return self.config.divergence.enabled

    def stopped_before(self) -> bool:
        """The run resumes from a checkpoint of a run that had already stopped early: it trains no more."""
        return self.config.patience is not None and self.stale_epochs >= self.config.patience

    def step(self, loss: float) -> bool:
        """One training step's loss: True when the run has diverged on it (then no update may use that loss)."""
        self.reason = self.tracker.update(loss)
        return self.reason is not None

    def end_epoch(
        self, point: EpochPoint, save: Callable[[], None], should_stop: Callable[[], bool] | None
    ) -> Ending | None:
        """The epoch's point, recorded: how the run ends with it, or None when it goes on.

        save() is called when the run goes on past the divergence rules (it builds a checkpoint if one is due).
        """
        epoch = point.epoch
        self.points.append(point)
        if self.reason is None and self.config.divergence.enabled:
            self.reason = self.tracker.end_epoch(point.val_loss, point.val_accuracy)
        if self.reason is not None:
            logger.warning("%s diverged in epoch %d: %s", self.label, epoch, self.reason)
            return "diverged"
        if point.val_loss < self.best_val_loss:  # a NaN val_loss never counts as an improvement
            self.best_val_loss, self.stale_epochs = point.val_loss, 0
        else:
            self.stale_epochs += 1
        save()
        if self.stopped_before():
            logger.info(
                "%s: early stop after epoch %d, no val_loss improvement in %d", self.label, epoch, self.stale_epochs
            )
            return "early_stopped"
        if epoch >= self.config.epochs:
            return "finished"
        if should_stop is not None and should_stop():
            logger.info("%s stopped on request after epoch %d", self.label, epoch)
            return "stopped"
        return None

    def checkpoint(
        self,
        model_state: dict[str, Tensor],
        optimizer_state: dict[str, Any],
        order: torch.Generator,
        device: torch.device,
    ) -> Checkpoint:
        """The run after its last recorded epoch; model_state and optimizer_state must be copies already."""
        return Checkpoint(
            epoch=self.points[-1].epoch if self.points else 0,
            model_state=model_state,
            optimizer_state=optimizer_state,
            data_generator_state=order.get_state(),
            torch_rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            divergence_state=self.tracker.state(),
            best_val_loss=self.best_val_loss,
            epochs_without_improvement=self.stale_epochs,
            points=[asdict(p) for p in self.points],
        )

    def result(self, ending: Ending, seconds: float, n_parameters: int, device: torch.device) -> TrainResult:
        diverged = ending == "diverged"
        return TrainResult(
            status="diverged" if diverged else "stopped" if ending == "stopped" else "succeeded",
            points=self.points,
            diverged_at=self.points[-1].epoch if diverged else None,
            reason=self.reason if diverged else None,
            early_stopped=ending == "early_stopped",
            seconds=seconds,
            n_parameters=n_parameters,
            device=str(device),
        )
