"""Population based training: the request, a member, a lineage event, the population and its schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from lrlab.schemas.runs import CurvePoint, RunStatus, RunSummary
from lrlab.schemas.spec import MAX_EPOCHS, OPTIMIZER_SCHEMAS, PiecewiseSchedule, RunSpec, Strict

MAX_POPULATION = 32  # one progress writer (a database connection) per member when the population trains fused

# The numeric hyperparameters a population may search, per optimizer (torch's names). Adam's betas are a
# pair and the flags (nesterov, amsgrad, centered) change which state exists: neither can change mid-run.
MUTABLE: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "momentum", "dampening", "weight_decay"),
    "rmsprop": ("lr", "alpha", "eps", "momentum", "weight_decay"),
    "adam": ("lr", "eps", "weight_decay"),
    "adamw": ("lr", "eps", "weight_decay"),
    "adagrad": ("lr", "lr_decay", "eps", "weight_decay"),
    "adadelta": ("lr", "rho", "eps", "weight_decay"),
}

Bound = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _low_below_high(cls: type, value: tuple[float, float]) -> tuple[float, float]:
    if value[0] >= value[1]:
        raise ValueError(f"low ({value[0]:g}) must be less than high ({value[1]:g})")
    return value


class LogUniform(Strict):
    log_uniform: tuple[
        Annotated[float, Field(gt=0, allow_inf_nan=False)], Annotated[float, Field(gt=0, allow_inf_nan=False)]
    ] = Field(
        strict=False,
        description="[low, high]: sampled uniformly in log space; perturbed by multiplying (a step in log space).",
    )

    _order = field_validator("log_uniform")(_low_below_high)


class Uniform(Strict):
    uniform: tuple[Bound, Bound] = Field(
        strict=False, description="[low, high]: sampled uniformly; perturbed by multiplying."
    )

    _order = field_validator("uniform")(_low_below_high)


class Choices(Strict):
    choices: list[Bound] = Field(
        min_length=2, max_length=32, description="Values to pick from; perturbed to a neighbour in this order."
    )

    @field_validator("choices")
    @classmethod
    def _distinct(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("choices must be distinct")
        return value


SCHEDULE_RULE = "must be constant without warmup: the population discovers the schedule"

MUTATION_KINDS: dict[str, type[Strict]] = {"log_uniform": LogUniform, "uniform": Uniform, "choices": Choices}


def _mutation_kind(value: Any) -> str | None:
    """The one key naming the kind; None (one clear error, not one per kind) for anything else."""
    if isinstance(value, dict):
        kinds = [k for k in MUTATION_KINDS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return next((k for k, cls in MUTATION_KINDS.items() if isinstance(value, cls)), None)


MutationSpec = Annotated[
    Annotated[LogUniform, Tag("log_uniform")] | Annotated[Uniform, Tag("uniform")] | Annotated[Choices, Tag("choices")],
    Discriminator(
        _mutation_kind,
        custom_error_type="mutation_kind",
        custom_error_message='expected one of {"log_uniform": [low, high]}, {"uniform": [low, high]}'
        ' or {"choices": [...]}',
    ),
]


def _invalid(loc: tuple[str | int, ...], msg: str, value: Any) -> ValidationError:
    """A check across fields, reported at the field it is about (a plain ValueError would point at the body)."""
    error = InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=loc, input=value)
    return ValidationError.from_exception_data("PbtCreate", [error])


def mutation_values(m: MutationSpec) -> list[float]:
    """The values a mutation can reach at its edges: checked against the optimizer's own bounds."""
    if isinstance(m, LogUniform):
        return list(m.log_uniform)
    if isinstance(m, Uniform):
        return list(m.uniform)
    return list(m.choices)


class PbtCreate(Strict):
    """Train `population` members for `epochs`; every `interval` epochs the bottom `quantile` copies the top
    (weights and optimizer state) and explores its hyperparameters."""

    name: str = Field("pbt", min_length=1, max_length=200)
    base: RunSpec = Field(
        default_factory=RunSpec,
        description=(
            "A run spec without `epochs` (set at the top level). Its schedule must be constant: the population"
            " finds the schedule. Members never stop early or on divergence: a diverged member ranks last and is"
            " replaced. Member k starts from seed base.seed + k (its initial weights and data order); all of them"
            " share one train/validation split (base.split_seed, default base.seed), so a member that copies"
            " another's weights is never scored on samples those weights were trained on."
        ),
    )
    population: int = Field(8, ge=2, le=MAX_POPULATION)
    epochs: int = Field(8, ge=1, le=MAX_EPOCHS)
    interval: int = Field(2, ge=1, le=MAX_EPOCHS, description="Epochs between exploit/explore rounds.")
    quantile: float = Field(
        0.25, gt=0, le=0.5, description="The bottom quantile copies the top one (Ray Tune's quantile_fraction)."
    )
    mutations: dict[str, MutationSpec] = Field(
        min_length=1,
        max_length=8,
        description='Optimizer hyperparameters to search, e.g. {"lr": {"log_uniform": [1e-4, 1.0]}}.',
        examples=[{"lr": {"log_uniform": [1e-4, 1.0]}, "momentum": {"uniform": [0.8, 0.99]}}],
    )
    perturbation_factors: list[Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]] = Field(
        default_factory=lambda: [0.8, 1.2], min_length=1, max_length=4
    )
    resample_probability: float = Field(0.25, ge=0, le=1, description="Chance to draw a value afresh when exploring.")
    metric: Literal["val_accuracy", "val_loss", "train_accuracy", "train_loss"] = "val_accuracy"
    mode: Literal["max", "min"] | None = Field(None, description="Default: max for accuracies, min for losses.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the initial draws and every round's choices.")
    execution: Literal["auto", "fused", "distributed"] = Field(
        "auto",
        description=(
            "fused: the whole population as one stacked pack on one worker; distributed: one task per member per"
            " interval, across workers; auto: fused when the model is fusable."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _base_without_epochs(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("base"), dict) and "epochs" in data["base"]:
            raise _invalid(
                ("base", "epochs"), "set `epochs` at the top level (the population's total)", data["base"]["epochs"]
            )
        base = data.get("base") if isinstance(data, dict) else None
        schedule = base.get("schedule") if isinstance(base, dict) else None
        if isinstance(schedule, dict) and schedule.get("warmup_epochs"):  # before RunSpec's check against its epochs
            raise _invalid(("base", "schedule"), SCHEDULE_RULE, schedule)
        return data

    @model_validator(mode="after")
    def _check(self) -> PbtCreate:
        if self.mode is None:
            self.mode = "max" if self.metric.endswith("accuracy") else "min"
        if self.interval > self.epochs:
            raise _invalid(("interval",), f"must be at most epochs ({self.epochs})", self.interval)
        schedule = self.base.schedule
        if schedule.kind != "constant" or schedule.warmup_epochs:
            raise _invalid(
                ("base", "schedule"),
                SCHEDULE_RULE,
                schedule.model_dump(mode="json"),
            )
        if self.base.patience is not None:
            raise _invalid(
                ("base", "patience"),
                "members train every epoch (early stopping would break the rounds): leave it out",
                self.base.patience,
            )
        optimizer = self.base.optimizer
        allowed = MUTABLE[optimizer.name]
        for name, space in self.mutations.items():
            at, given = ("mutations", name), space.model_dump(mode="json")
            if name not in allowed:
                raise _invalid(
                    at, f"not a searchable hyperparameter of {optimizer.name} (one of {', '.join(allowed)})", given
                )
            for value in mutation_values(space):
                try:
                    OPTIMIZER_SCHEMAS[optimizer.name].model_validate({**optimizer.model_dump(), name: value})
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    raise _invalid(
                        at, f"{value:g} is not a valid {name} for {optimizer.name}: {reason}", given
                    ) from None
            if name == "momentum" and 0 in mutation_values(space):
                raise _invalid(at, "keep 0 out of the range (a momentum buffer cannot appear or vanish mid-run)", given)
        return self

    @field_serializer("base", mode="wrap")
    def _base_out(self, base: RunSpec, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # base never has epochs (RunSpec's default would show, and a PbtPublic read back would fail the check
        # above); no return annotation, so the schema still documents base as a RunSpec
        out = handler(base)
        out.pop("epochs", None)
        return out

    def to_json(self) -> dict[str, Any]:
        """The stored form: defaults filled in, base without the epochs it never had."""
        out = self.model_dump(mode="json")
        out["base"].pop("epochs", None)
        return out

    def member_spec(self, member: int, hyperparameters: dict[str, Any]) -> RunSpec:
        """Member k's run spec with these hyperparameters (lr included) in its optimizer."""
        spec = self.base.to_json()
        spec["optimizer"].update(hyperparameters)
        spec["epochs"] = self.epochs
        # its own initial weights and data order, but everyone's split: an exploit hands one member's weights
        # to another, and with a split of their own those weights had trained on part of the target's
        # validation set, so the rounds (and `best`) would reward memorised validation samples
        spec["seed"] = self.base.seed + member
        spec["split_seed"] = self.base.data_seed
        spec["divergence"] = {**spec["divergence"], "enabled": False}
        return RunSpec.model_validate(spec)


class PbtCreated(BaseModel):
    id: str
    runs: list[str] = Field(description="Member run ids, member 0 first.")


class Hyperparameters(BaseModel):
    epoch: int
    values: dict[str, Any]


class PbtMemberPublic(BaseModel):
    member: int
    run_id: str
    status: RunStatus
    seed: int
    hyperparameters: dict[str, Any] = Field(description="In force now (or at the end).")
    points: list[CurvePoint] = Field(default_factory=list, description="Empty in GET /v1/pbt (the list).")
    hyperparameters_by_epoch: list[Hyperparameters] = Field(
        default_factory=list, description="The member's own hyperparameters in force in each epoch it trained."
    )
    summary: RunSummary | None = None


class LineageEvent(BaseModel):
    epoch: int = Field(description="The completed epoch after which the replacement happened.")
    target: int
    source: int
    old: dict[str, Any]
    new: dict[str, Any]
    resampled: list[str] = Field(description="Names drawn afresh; the others were perturbed by a factor.")


class FollowedEpoch(BaseModel):
    epoch: int
    member: int = Field(description="The member whose weights were trained in this epoch (inherited history).")
    values: dict[str, Any]


class PbtBest(BaseModel):
    member: int
    run_id: str
    epoch: int = Field(description="The epoch the score was read at (the last one every member reached).")
    score: float
    val_accuracy: float | None
    schedule: list[FollowedEpoch] = Field(
        description="The hyperparameters its weights were trained with, epoch by epoch."
    )


class PbtPublic(BaseModel):
    id: str
    name: str
    status: RunStatus
    execution: str
    spec: PbtCreate
    epochs_completed: int = Field(description="The last round boundary every member reached.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    members: list[PbtMemberPublic]
    lineage: list[LineageEvent]
    best: PbtBest | None


class PbtsPublic(BaseModel):
    data: list[PbtPublic]
    next_cursor: str | None = None


class DiscoveredSchedule(BaseModel):
    """The best member's lr schedule as a piecewise schedule, and a run spec that replays it from scratch."""

    pbt_id: str
    member: int
    schedule: PiecewiseSchedule
    run: RunSpec = Field(description="POST to /v1/runs to train one model on this schedule from scratch.")
    not_replayed: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Other searched hyperparameters, per epoch: a run spec holds one value of each, its first.",
    )
