"""Run resources as the API returns them: status, summary, curve points, pages."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from lrlab.schemas.spec import RunSpec


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    diverged = "diverged"

    def is_finished(self) -> bool:
        return self not in (RunStatus.queued, RunStatus.running)


class CurvePoint(BaseModel):
    """One epoch's numbers. A NaN or infinite loss is stored and returned as null, named in `nonfinite`."""

    epoch: int = Field(ge=1, description="Epochs count from 1.")
    train_loss: float | None
    train_accuracy: float | None = Field(ge=0, le=1)
    val_loss: float | None
    val_accuracy: float | None = Field(ge=0, le=1)
    lr: float = Field(description="The learning rate in force during this epoch.")
    seconds: float = Field(ge=0, description="Wall time of the epoch.")
    nonfinite: list[str] = Field(default_factory=list, description="Fields that were NaN or infinite.")


class RunSummary(BaseModel):
    epochs_completed: int = 0
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    final_val_accuracy: float | None = None
    final_val_loss: float | None = None
    min_val_loss: float | None = None
    seconds: float = 0.0
    diverged_at: int | None = None
    reason: str | None = Field(None, description="Why the run diverged or stopped early.")
    early_stopped: bool = False
    epochs_to_target: int | None = Field(None, description="First epoch reaching the requested target accuracy.")


class RunCreated(BaseModel):
    id: str
    status: RunStatus


class RunPublic(BaseModel):
    id: str
    status: RunStatus
    spec: RunSpec
    queue: str = Field(description="The Celery queue the run was sent to: gpu or cpu.")
    device: str | None = Field(None, description="The device the run trained on.")
    n_parameters: int | None = None
    label: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    summary: RunSummary | None
    cancel_requested: bool = False


class RunsPublic(BaseModel):
    data: list[RunPublic]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next (older) page.")


class Curves(BaseModel):
    run_id: str
    points: list[CurvePoint]
    sampled: bool = False
    method: str | None = None
    n_raw: int = 0
    n_returned: int = 0


def summarize(points: list[dict[str, Any]], *, target: float | None = None, **extra: Any) -> RunSummary:
    """Summary numbers of a curve; points are CurvePoint-shaped dicts in epoch order."""
    accs = [(p["val_accuracy"], p["epoch"]) for p in points if p.get("val_accuracy") is not None]
    losses = [p["val_loss"] for p in points if p.get("val_loss") is not None]
    best = max(accs, key=lambda a: (a[0], -a[1]), default=None)
    reached = next((e for a, e in accs if target is not None and a >= target), None)
    return RunSummary(
        epochs_completed=len(points),
        best_val_accuracy=best[0] if best else None,
        best_epoch=best[1] if best else None,
        final_val_accuracy=points[-1].get("val_accuracy") if points else None,
        final_val_loss=points[-1].get("val_loss") if points else None,
        min_val_loss=min(losses, default=None),
        seconds=sum(p.get("seconds") or 0.0 for p in points),
        epochs_to_target=reached,
        **extra,
    )
