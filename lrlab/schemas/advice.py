"""Advice ("which optimizer, which learning rate?" in one request): the request, its stages and its answer."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from lrlab.schemas.compare import Verdict
from lrlab.schemas.search import EarlyStopping
from lrlab.schemas.spec import OptimizerSpec, RunSpec, ScheduleSpec
from lrlab.schemas.strict import Strict

# The article's five optimizers (SGD with momentum 0.9, RMSProp, Adam, Adagrad, Adadelta) and AdamW.
ARTICLE_OPTIMIZERS = ("sgd", "rmsprop", "adam", "adagrad", "adadelta", "adamw")
# A name stands for the article's settings of that optimizer; an object says exactly what it wants.
BY_NAME: dict[str, dict[str, Any]] = {"sgd": {"name": "sgd", "momentum": 0.9}}
MAX_OPTIMIZERS = 8
MAX_SEEDS = 10
MAX_SCHEDULES = 4
MAX_SEED = 2**31 - 1  # RunSpec.seed's bound


class AdviceStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    def is_finished(self) -> bool:
        return self not in (AdviceStatus.queued, AdviceStatus.running)


class AdviceStage(enum.StrEnum):
    """The pipeline's stages, in order; the verdict is decided when the replicates end."""

    range_tests = "range_tests"
    search = "search"
    replicates = "replicates"
    verdict = "verdict"


def _optimizer_by_name(value: Any) -> Any:
    return dict(BY_NAME.get(value, {"name": value})) if isinstance(value, str) else value


OptimizerChoice = Annotated[OptimizerSpec, BeforeValidator(_optimizer_by_name)]


def _default_optimizers() -> list[Any]:
    return [_optimizer_by_name(name) for name in ARTICLE_OPTIMIZERS]


def _default_schedules() -> list[Any]:
    return [{"kind": "constant"}, {"kind": "cosine"}]


def settings_key(optimizer: BaseModel) -> str:
    """An optimizer's settings without its lr, as text: two choices with the same key are the same candidate."""
    return repr(sorted((k, v) for k, v in optimizer.model_dump(mode="json").items() if k != "lr"))


def _invalid(loc: tuple[str | int, ...], msg: str, value: Any) -> ValidationError:
    error = InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=loc, input=value)
    return ValidationError.from_exception_data("AdviceCreate", [error])


class AdviceCreate(Strict):
    """Which optimizer and learning rate for this dataset and model? Range tests, a pruned search around their
    suggestions, the best configurations replicated over seeds, a verdict between the two best."""

    name: str = Field("advice", min_length=1, max_length=200)
    base: RunSpec = Field(
        default_factory=RunSpec,
        description=(
            "Dataset, model, batch size, device, and `epochs`: the budget of one full run. Its optimizer, lr and"
            " schedule are ignored (`optimizers` and `schedules` say what is tried)."
        ),
    )
    optimizers: list[OptimizerChoice] = Field(
        default_factory=_default_optimizers,
        validate_default=True,
        min_length=1,
        max_length=MAX_OPTIMIZERS,
        description=(
            "Names or optimizer objects (their lr is ignored). A name takes the article's settings: sgd is SGD with"
            " momentum 0.9, the others torch's defaults. Default: sgd, rmsprop, adam, adagrad, adadelta, adamw."
        ),
        examples=[["adam", "rmsprop", {"name": "sgd", "momentum": 0.9, "nesterov": True}]],
    )
    seeds: int = Field(3, ge=2, le=MAX_SEEDS, description="Replicates of each finalist in the final comparison.")
    schedules: list[ScheduleSpec] = Field(
        default_factory=_default_schedules,
        validate_default=True,
        min_length=1,
        max_length=MAX_SCHEDULES,
        description="The first is used throughout; the others are tried on the best configuration.",
    )

    @model_validator(mode="after")
    def _check(self) -> AdviceCreate:
        if self.base.seed + self.seeds - 1 > MAX_SEED:
            raise _invalid(
                ("seeds",),
                f"the replicates' seeds, base.seed ({self.base.seed}) to base.seed + seeds - 1, pass {MAX_SEED}",
                self.seeds,
            )
        seen: dict[str, int] = {}
        for i, optimizer in enumerate(self.optimizers):
            key = settings_key(optimizer)
            if key in seen:
                raise _invalid(("optimizers", i), f"the same optimizer settings as optimizers[{seen[key]}]", key)
            seen[key] = i
        kinds: dict[str, int] = {}
        for i, schedule in enumerate(self.schedules):
            key = repr(schedule.model_dump(mode="json"))
            if key in kinds:
                raise _invalid(("schedules", i), f"the same schedule as schedules[{kinds[key]}]", key)
            kinds[key] = i
            if schedule.warmup_epochs >= self.base.epochs:
                raise _invalid(
                    ("schedules", i, "warmup_epochs"),
                    f"must be less than base.epochs ({self.base.epochs}): the schedule itself would never start",
                    schedule.warmup_epochs,
                )
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class AdviceCreated(BaseModel):
    id: str
    status: AdviceStatus
    stage: AdviceStage
    lr_finders: list[str] = Field(description="The range tests' job ids (stage 1), one per optimizer.")


# --- what GET /v1/advice/{id} says ------------------------------------------------------------------


class RangeTest(BaseModel):
    """Stage 1, per optimizer: its lr range test and the lrs the search tries around its suggestion."""

    optimizer: str = Field(description="The optimizer and its settings, e.g. `sgd(momentum=0.9)`.")
    job_id: str
    status: str
    suggested_lr: float | None = Field(None, description="The range test's default suggestion.")
    center_lr: float | None = Field(None, description="The lr the search centres on (None until the test ends).")
    source: str | None = Field(None, description="Where center_lr came from: the suggestion, or why not.")
    lrs: list[float] = Field(default_factory=list, description="The lrs the search tries for this optimizer.")


class Candidate(BaseModel):
    """Stage 2: one run of the search."""

    run_id: str
    optimizer: str
    lr: float
    status: str
    epochs: int = Field(description="Epochs it trained (fewer when early stopping ended it).")
    best_val_accuracy: float | None = None


class SearchStage(BaseModel):
    experiment_id: str
    early_stopping: EarlyStopping | None = Field(
        None, description="Successive halving over the search (None: every candidate trains the full budget)."
    )
    candidates: list[Candidate] = Field(description="Best first once the search has ended.")
    finalists: list[str] = Field(default_factory=list, description="The labels of the configurations replicated.")


class Accuracy(BaseModel):
    """Each replicate's best validation accuracy, over seeds."""

    mean: float | None
    std: float | None = Field(description="Sample standard deviation; None below 2 values.")
    n: int
    values: list[float | None] = Field(description="Per seed, aligned with `seeds`; None for a failed replicate.")
    seeds: list[int]


class Configuration(BaseModel):
    """A configuration of stage 3 and how its replicates did."""

    label: str = Field(description="e.g. `adam 3e-3` or `adam 3e-3 cosine`.")
    optimizer: dict[str, Any] = Field(description="The optimizer's name and hyperparameters (lr apart).")
    lr: float
    schedule: dict[str, Any]
    val_accuracy: Accuracy
    run_ids: list[str]
    spec: RunSpec = Field(description="A run spec of this configuration at full budget: POST it to /v1/runs.")


class ReplicatesStage(BaseModel):
    experiment_id: str = Field(description="The finalists over every seed.")
    schedules_experiment_id: str | None = Field(
        None, description="The other schedules on the best configuration of the search, over every seed."
    )
    configurations: list[Configuration] = Field(description="Best mean first once every replicate has ended.")


class AdviceVerdict(Verdict):
    statement: str = Field(description="The verdict in one plain sentence.")


class Compute(BaseModel):
    epochs_trained: float = Field(
        description="Epochs stored across every run of the advice, and the range tests' steps as epochs of the"
        " training split (a plugin's dataset, or a file, counts as 10,000 samples there, as in the quota)."
    )
    full_grid_epochs: int = Field(
        description="The same candidates (every optimizer x lr the search tried, every schedule tried) over every"
        " seed at full budget."
    )
    fraction: float | None = Field(None, description="epochs_trained / full_grid_epochs.")


class AdvicePublic(BaseModel):
    id: str
    name: str
    status: AdviceStatus
    stage: AdviceStage
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    request: AdviceCreate
    range_tests: list[RangeTest]
    search: SearchStage | None = None
    replicates: ReplicatesStage | None = None
    recommendation: Configuration | None = Field(None, description="The winner, once the advice has succeeded.")
    runner_up: Configuration | None = Field(None, description="The best configuration of another optimizer (or lr).")
    verdict: AdviceVerdict | None = None
    compare_url: str | None = Field(None, description="The winner's and runner-up's replicates in /v1/compare.")
    compute: Compute


class AdvicesPublic(BaseModel):
    data: list[AdvicePublic]
    next_cursor: str | None = None
