"""Experiments (grids of runs) and learning-rate range tests: requests and responses."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from lrlab.schemas.plugins import finite
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.search import EarlyStopping, check_grace
from lrlab.schemas.spec import (
    MAX_BATCH_SIZE,
    MAX_LR,
    AdamSpec,
    DatasetRef,
    Device,
    Lr,
    MlpSpec,
    ModelSpec,
    OptimizerSpec,
    RunSpec,
    ScheduleSpec,
    Strict,
)

MAX_GRID_CELLS = 256
MAX_PATH_AXES = 8
PATH_AXIS = r"[a-z_]+(\.[A-Za-z_][A-Za-z0-9_]{0,63}){1,4}"  # model.params.width: at most 5 parts
PathValues = Annotated[list[Annotated[JsonValue, AfterValidator(finite)]], Field(min_length=1, max_length=64)]
MIN_SWEEP_LR = 1e-10  # the lr range test's smallest min_lr


class Grid(Strict):
    """Lists to combine; the cartesian product becomes one run per cell (at most 256 cells). Besides the named
    axes, a dotted path into the run spec is an axis: `"model.params.width": [16, 64]` sets each cell's
    model.params.width (a plugin model's parameter), `"optimizer.momentum": [0, 0.9]` its momentum."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, PathValues] = Field(init=False)

    optimizer: list[OptimizerSpec] | None = Field(
        None, min_length=1, max_length=64, description="Optimizer objects, each with or without its own lr."
    )
    lr: list[Lr] | None = Field(None, min_length=1, max_length=64, description="Lands in each cell's optimizer.lr.")
    schedule: list[ScheduleSpec] | None = Field(None, min_length=1, max_length=16)
    seed: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=64, description="Replicates: the compare view aggregates over seeds."
    )
    batch_size: list[Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)]] | None = Field(None, min_length=1, max_length=16)

    @model_validator(mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        paths = [k for k in value if k not in cls.model_fields]
        for key in paths:
            if (
                not isinstance(key, str)
                or not re.fullmatch(PATH_AXIS, key)
                or key.split(".")[0] not in RunSpec.model_fields
            ):
                msg = (
                    f"unknown grid axis {key!r}: an axis is one of {', '.join(cls.model_fields)}, or a dotted path"
                    f" into the run spec whose first part is one of its fields ({', '.join(RunSpec.model_fields)})"
                )
                error = InitErrorDetails(type=PydanticCustomError("extra_forbidden", msg), loc=(key,), input=value[key])
                raise ValidationError.from_exception_data("Grid", [error])  # at grid.<key>, as a field's error
        if len(paths) > MAX_PATH_AXES:
            raise ValueError(f"{len(paths)} dotted axes; at most {MAX_PATH_AXES}")
        return value

    def axes(self) -> dict[str, list[Any]]:
        named = {k: v for k, v in ((k, getattr(self, k)) for k in type(self).model_fields) if v is not None}
        return {**named, **(self.model_extra or {})}

    def cells(self) -> int:
        n = 1
        for values in self.axes().values():
            n *= len(values)
        return n


class ExperimentCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    execution: Literal["auto", "fused", "separate"] = Field(
        "auto",
        description=(
            "fused: members train stacked as one population (an MLP without dropout, a cnn or a resnet; otherwise"
            " they fall back to separate); separate: one task per run; auto: fused when a GPU worker is live and the"
            " model allows."
        ),
    )
    base: RunSpec = Field(default_factory=RunSpec, description="A run spec; the grid's values replace its fields.")
    grid: Grid
    early_stopping: EarlyStopping | None = Field(
        None,
        description=(
            "Successive halving (ASHA) over the grid's runs: at epochs grace_epochs x reduction_factor^k (below"
            " base.epochs) a run goes on only in the top 1/reduction_factor of the runs that reached that epoch;"
            " the others end `stopped`."
        ),
    )

    @model_validator(mode="after")
    def _grace_below_epochs(self) -> ExperimentCreate:
        check_grace(self.early_stopping, self.base.epochs, ("early_stopping",))
        return self

    @field_validator("grid")
    @classmethod
    def _cap(cls, grid: Grid) -> Grid:
        if not grid.axes():
            raise ValueError("the grid needs at least one list (optimizer, lr, schedule, seed or batch_size)")
        if grid.cells() > MAX_GRID_CELLS:
            raise ValueError(f"the grid has {grid.cells()} cells; at most {MAX_GRID_CELLS} are allowed")
        return grid


class ExperimentCreated(BaseModel):
    id: str
    runs: list[str] = Field(description="Member run ids, one per grid cell, in grid order.")


class MemberRun(BaseModel):
    id: str
    status: RunStatus
    label: str
    params: dict[str, Any]


class ExperimentPublic(BaseModel):
    id: str
    name: str
    execution: str = "separate"
    created_at: datetime
    base: RunSpec
    grid: dict[str, Any]
    early_stopping: EarlyStopping | None = None
    status: str = Field(description="queued, running, or finished (every member finished).")
    counts: dict[str, int] = Field(description="Member runs by status.")
    runs: list[MemberRun]


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    next_cursor: str | None = None


# --- learning-rate range test -------------------------------------------------------------------


class LrFinderCreate(Strict):
    """Sweep lr exponentially from min_lr to max_lr over `steps` training steps; stop when the loss explodes."""

    dataset: DatasetRef = Field(default_factory=lambda: DatasetRef(name="digits"))
    model: ModelSpec = Field(default_factory=MlpSpec)
    optimizer: OptimizerSpec = Field(
        default_factory=lambda: AdamSpec(name="adam"), description="Its lr is ignored: the finder sweeps it."
    )
    min_lr: Lr = Field(
        1e-7,
        ge=MIN_SWEEP_LR,
        lt=MAX_LR,
        description=(
            f"The sweep's first lr, at least {MIN_SWEEP_LR:g} (smaller steps are lost to float32 rounding); with"
            f" max_lr at most {MAX_LR:g} a sweep spans at most {MAX_LR / MIN_SWEEP_LR:.0e}x, every lr in it finite."
        ),
    )
    # checked against min_lr even when left out
    max_lr: Lr = Field(10.0, validate_default=True, description="The sweep's last lr; greater than min_lr.")
    steps: int = Field(100, ge=10, le=10_000)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = "auto"
    smoothing: float = Field(0.98, ge=0, lt=1, description="EMA coefficient of the smoothed loss.")
    stop_factor: float = Field(4.0, gt=1, le=1e6, description="Stop when smoothed loss > factor x its minimum.")

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("max_lr")
    @classmethod
    def _range(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_lr")
        if low is not None and value <= low:
            raise ValueError(f"max_lr ({value:g}) must be greater than min_lr ({low:g})")
        return value

    def run_spec(self) -> dict[str, Any]:
        """The run spec the trainer builds its model, data and optimizer from."""
        return RunSpec(
            dataset=self.dataset,
            model=self.model,
            optimizer=self.optimizer,
            batch_size=self.batch_size,
            seed=self.seed,
            device=self.device,
        ).to_json()


class LrPoint(BaseModel):
    step: int
    lr: float
    loss: float | None
    smoothed_loss: float | None


class LrSuggestion(BaseModel):
    """One rule's pick from the sweep (docs/lr-finder.md measures them)."""

    name: str = Field(
        description="minimum: a tenth of the lr at the smoothed loss's minimum (the default); valley: halfway"
        " along the longest falling stretch of the smoothed loss (fastai's rule); steepest: where the smoothed"
        " loss falls fastest against log lr (too high for SGD with momentum)."
    )
    lr: float | None = Field(description="None when the sweep gave the rule nothing to go on (`rule` says why).")
    rule: str = Field(description="How lr was chosen, or why there is none.")


class LrFinderPublic(BaseModel):
    id: str
    status: RunStatus
    spec: LrFinderCreate
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    points: list[LrPoint] = Field(default_factory=list, description="One per step taken.")
    suggested_lr: float | None = Field(None, description="The default rule's lr: the first of `suggestions`.")
    rule: str | None = Field(None, description="How suggested_lr was chosen.")
    suggested_grid: list[float] = Field(
        default_factory=list, description="lr/10, lr/3, lr, 3 lr around suggested_lr: feed to an experiment's grid.lr."
    )
    suggestions: list[LrSuggestion] = Field(
        default_factory=list, description="Every rule's suggestion, the default first (none for jobs run before)."
    )
    stopped_early: bool = False
    reason: str | None = None
    n_parameters: int | None = None
    seconds: float | None = None
    cancel_requested: bool = False


class LrFindersPublic(BaseModel):
    data: list[LrFinderPublic]
    next_cursor: str | None = None
