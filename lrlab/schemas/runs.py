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
    stopped = "stopped"  # by successive halving (early_stopping: asha): not among the top runs at a rung

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
    stopped_at: int | None = Field(
        None, description="The rung (epoch) at which successive halving stopped the run (status `stopped`)."
    )
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
    experiment_id: str | None = None
    params: dict[str, Any] | None = Field(None, description="The grid values this run was made from.")
    pack_id: str | None = Field(None, description="The fused pack this run trained in, if any.")
    not_fused_reason: str | None = Field(
        None,
        description=(
            "Why the run trained on its own although its experiment asked to fuse it (a model with dropout, a"
            " plugin's model that cannot be stacked, ...); null otherwise."
        ),
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    summary: RunSummary | None
    cancel_requested: bool = False
    waiting_reason: str | None = Field(
        None,
        description=(
            "Why a queued run is not being picked up: no live worker (heartbeat within LRLAB_HEARTBEAT_TTL_SECONDS)"
            " serves its queue, e.g. `device: cuda` with no GPU worker. Null when a worker is there or the run is"
            " not queued."
        ),
    )


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
