"""When a run has diverged: a loss that explodes within an epoch, or a run that collapses back to chance.

Two rules, the same in trainer.train and the fused population engine (both feed one DivergenceTracker):

- explosion, checked every step: a NaN/inf loss, or the EMA-smoothed training loss above `factor` x the
  first batch's loss. It stops the run inside the epoch, before the update that would use that loss.
- collapse, checked after each epoch on the validation curve: the run had learned (its best validation
  accuracy covered at least a tenth of the way from chance to 1), and then for COLLAPSE_EPOCHS epochs in a
  row both its validation accuracy and its validation loss kept less than half of their best gain over
  chance. Chance is the model that predicts the training labels' frequencies: its loss is their entropy
  (ln C for C balanced classes), its accuracy the most frequent class's share.

Why both: an exploding loss soon passes factor x the first loss, but a run whose ReLUs die, or that
bounces out of its basin, settles at the chance loss (the first loss is already there), so only the second
rule sees it. The collapse rule is relative to the run's own best, so a run that never learned (a tiny lr)
is not "diverged"; it needs accuracy and loss both, because an overfitting run's validation loss can climb
past its best while its accuracy holds; and it needs two epochs, so a single bad epoch that recovers
(a spike) is not a divergence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

COLLAPSE_KEEP = 0.5  # an epoch has collapsed when it keeps less than this share of its best gain over chance
COLLAPSE_EPOCHS = 2  # consecutive collapsed epochs that make a divergence
LEARNED = 0.1  # the collapse rule applies once the best val accuracy is this share of the way from chance to 1


@dataclass(frozen=True)
class Chance:
    """The scores of predicting the training labels' class frequencies, whatever the input."""

    loss: float  # cross-entropy of that prediction: the entropy of the frequencies
    accuracy: float  # always the most frequent class


def chance_of(y_train: Tensor, n_classes: int) -> Chance:
    counts = torch.bincount(y_train.cpu(), minlength=n_classes).double()  # (C,)
    p = counts[counts > 0] / counts.sum()
    return Chance(loss=float(-(p * p.log()).sum()), accuracy=float(p.max()))


class _Point(Protocol):
    val_loss: float
    val_accuracy: float


@dataclass
class DivergenceTracker:
    """Both divergence rules for one run: update() every training step, end_epoch() after each validation."""

    factor: float
    smoothing: float
    chance: Chance | None = None  # the collapse rule is off until the data's chance scores are known
    initial: float | None = None
    smoothed: float | None = None
    steps: int = 0
    # the collapse rule's view of the curve so far; rebuilt from a checkpoint's points by replay()
    best_val_loss: float = math.inf
    best_val_accuracy: float = -math.inf
    collapsed_epochs: int = 0

    def update(self, loss: float) -> str | None:
        """Record one training step's loss; return why the run diverged, or None."""
        self.steps += 1
        if not math.isfinite(loss):
            return f"loss became {loss} at step {self.steps}"
        if self.initial is None or self.smoothed is None:
            self.initial = self.smoothed = loss
        else:
            # a single noisy batch should not end a run; a sustained climb should
            self.smoothed = self.smoothing * self.smoothed + (1 - self.smoothing) * loss
        if self.smoothed > self.factor * self.initial:
            return (
                f"smoothed loss {self.smoothed:.3g} exceeded {self.factor:g} x initial loss {self.initial:.3g}"
                f" at step {self.steps}"
            )
        return None

    def end_epoch(self, val_loss: float, val_accuracy: float) -> str | None:
        """Record one epoch's validation scores; return why the run collapsed, or None."""
        if self.chance is None:
            return None
        chance = self.chance
        if math.isfinite(val_loss):
            self.best_val_loss = min(self.best_val_loss, val_loss)
        self.best_val_accuracy = max(self.best_val_accuracy, val_accuracy)
        accuracy_gain = self.best_val_accuracy - chance.accuracy
        if accuracy_gain < LEARNED * (1 - chance.accuracy):  # never learned: nothing to collapse from
            self.collapsed_epochs = 0
            return None
        lost_accuracy = val_accuracy - chance.accuracy < COLLAPSE_KEEP * accuracy_gain
        # written as "not kept" so that a NaN validation loss counts as lost
        lost_loss = not (chance.loss - val_loss >= COLLAPSE_KEEP * (chance.loss - self.best_val_loss))
        self.collapsed_epochs = self.collapsed_epochs + 1 if lost_accuracy and lost_loss else 0
        if self.collapsed_epochs < COLLAPSE_EPOCHS:
            return None
        return (
            f"collapsed towards chance for {self.collapsed_epochs} epochs: val accuracy {val_accuracy:.3f} and"
            f" val loss {val_loss:.3g} kept less than {COLLAPSE_KEEP:.0%} of their best gains over chance"
            f" (best {self.best_val_accuracy:.3f} and {self.best_val_loss:.3g}; chance {chance.accuracy:.3f}"
            f" and {chance.loss:.3g})"
        )

    def replay(self, points: Iterable[_Point]) -> None:
        """Rebuild the collapse rule's state from the epochs a resumed run has already trained."""
        self.best_val_loss, self.best_val_accuracy, self.collapsed_epochs = math.inf, -math.inf, 0
        for p in points:
            self.end_epoch(p.val_loss, p.val_accuracy)

    def state(self) -> dict[str, Any]:
        """The explosion rule's state for a checkpoint (the collapse rule's is replayed from the points)."""
        return {"initial": self.initial, "smoothed": self.smoothed, "steps": self.steps}
