"""Comparison responses: ranked runs with sampled curves, replicate groups across seeds, and a verdict."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from lrlab.schemas.runs import CurvePoint, RunStatus, RunSummary
from lrlab.schemas.spec import RunSpec

Metric = Literal[
    "best_val_accuracy", "final_val_accuracy", "min_val_loss", "final_val_loss", "epochs_to_target", "seconds"
]
Mode = Literal["max", "min"]


class SamplingInfo(BaseModel):
    """How a curve was thinned for display; `n_raw` epochs were stored, `n_returned` are sent."""

    sampled: bool = False
    method: str | None = Field(None, description="None when every point is returned, else 'uniform+extrema'.")
    n_raw: int = 0
    n_returned: int = 0


class CompareRun(BaseModel):
    run_id: str
    label: str | None = None
    status: RunStatus
    spec: RunSpec
    summary: RunSummary | None = None
    points: list[CurvePoint]
    # The sampling fields sit flat on the run, as on `Curves`.
    sampled: bool = False
    method: str | None = None
    n_raw: int = 0
    n_returned: int = 0


class EpochStat(BaseModel):
    """Mean and sample standard deviation over the group's runs that reached this epoch (None where no data)."""

    epoch: int
    n: int = Field(description="Runs of the group that have this epoch.")
    val_accuracy_mean: float | None = None
    val_accuracy_std: float | None = None
    val_loss_mean: float | None = None
    val_loss_std: float | None = None
    train_accuracy_mean: float | None = None
    train_accuracy_std: float | None = None
    train_loss_mean: float | None = None
    train_loss_std: float | None = None


class ReplicateGroup(BaseModel):
    """Runs of one configuration that differ only in their seed."""

    label: str
    run_ids: list[str]
    seeds: list[int]
    n: int
    metric_values: list[float | None] = Field(description="Per run, aligned with `seeds`; None where unusable.")
    mean: float | None = None
    std: float | None = Field(None, description="Sample standard deviation (ddof=1); None below 2 values.")
    epochs: list[EpochStat] = Field(default_factory=list)


class Verdict(BaseModel):
    """Whether the better configuration beats the other beyond seed noise: a t-interval on the difference."""

    better: str = Field(description="Label of the group whose mean is better in the metric's direction.")
    other: str
    metric: str
    difference: float | None = Field(None, description="better - other in the metric's units (negative for 'min').")
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    method: Literal["paired t", "welch t"] | None = None
    n_better: int = 0
    n_other: int = 0
    n_pairs: int | None = Field(None, description="Seeds shared by both groups, when paired.")
    significant: bool = False
    note: str | None = None


class Comparison(BaseModel):
    metric: Metric
    mode: Mode
    target: float | None = None
    runs: list[CompareRun] = Field(description="Best first by the metric.")
    groups: list[ReplicateGroup] = Field(
        default_factory=list, description="Empty when no configuration has two or more seeds."
    )
    verdict: Verdict | None = None
