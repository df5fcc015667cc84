"""Searches: the search space over a run spec, early stopping by successive halving (ASHA), the request.

A space key is a dotted path into the run spec (`optimizer.momentum`, `model.dropout`, `schedule.gamma`,
`model.params.width` for a plugin model's factory argument) with two shorthands: `lr` for `optimizer.lr`, and
`optimizer` for the optimizer's name (each chosen optimizer with its own defaults). Each path is checked against
the base spec: it must name a number, flag or name the run spec has (for every optimizer `optimizer` may
choose), and every value the distribution can reach at its edges must make a valid run spec, so a bad space is
a 422 at `space.<key>` before anything trains. A plugin's parameter is one its factory takes: the schema cannot
know that without the plugin, so the API checks it against what the live workers offer (api/routes/searches.py).
"""

from __future__ import annotations

import math
import re
import types
import typing
from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from lrlab.schemas.plugins import PARAM_NAME
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.spec import MAX_EPOCHS, OPTIMIZER_SCHEMAS, RunSpec, Strict

MAX_SPACE_KEYS = 16
MAX_TRIALS = 1000
MAX_PARALLEL = 16  # the trials trained at once form one fused pack: a pack's member cap (lrlab.runs.fusing)
SHORTHANDS: dict[str, tuple[str, ...]] = {"lr": ("optimizer", "lr"), "optimizer": ("optimizer", "name")}
# Paths a search must not vary, and why (the message a 422 carries).
FIXED: dict[tuple[str, ...], str] = {
    ("epochs",): "the budget of every trial: set base.epochs",
    ("device",): "where a trial trains is not a hyperparameter: set base.device",
    ("dataset",): "trials are compared on one dataset: set base.dataset",
    ("split_seed",): "trials are compared on one validation split: set base.split_seed",
    ("optimizer", "name"): "search the optimizer with the `optimizer` shorthand",
    ("model", "name"): "the model family is fixed by base.model (its fields can be searched)",
    ("schedule", "kind"): "the schedule kind is fixed by base.schedule (its fields can be searched)",
}
Number = Annotated[float, Field(allow_inf_nan=False)]
Integer = int  # SearchInt's field is named `int`: inside its body the name would mean the field
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
ChoiceValue = Annotated[str, Field(max_length=100)] | int | float | bool | None


def _low_below_high(cls: type, value: tuple[Any, Any]) -> tuple[Any, Any]:
    if value[0] >= value[1]:
        raise ValueError(f"low ({value[0]:g}) must be less than high ({value[1]:g})")
    return value


class SearchLogUniform(Strict):
    log_uniform: tuple[Positive, Positive] = Field(strict=False, description="[low, high], sampled in log space.")

    _order = field_validator("log_uniform")(_low_below_high)


class SearchUniform(Strict):
    uniform: tuple[Number, Number] = Field(strict=False, description="[low, high], sampled uniformly.")

    _order = field_validator("uniform")(_low_below_high)


class SearchInt(Strict):
    int: tuple[Integer, Integer] = Field(strict=False, description="[low, high], integers, both included.")

    _order = field_validator("int")(_low_below_high)


class SearchChoice(Strict):
    choice: list[ChoiceValue] = Field(min_length=1, max_length=64, description="Values to pick from.")

    @field_validator("choice")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        seen = [(type(v), v) for v in value]  # 1, 1.0 and true are different choices
        if len(set(seen)) != len(seen):
            raise ValueError("choices must be distinct")
        if any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ValueError("choices must be finite")
        return value


DISTRIBUTIONS: dict[str, type[Strict]] = {
    "log_uniform": SearchLogUniform,
    "uniform": SearchUniform,
    "int": SearchInt,
    "choice": SearchChoice,
}


def _distribution_kind(value: Any) -> str | None:
    """The one key naming the kind; None (one clear error, not one per kind) for anything else."""
    if isinstance(value, dict):
        kinds = [k for k in DISTRIBUTIONS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return next((k for k, cls in DISTRIBUTIONS.items() if isinstance(value, cls)), None)


Distribution = Annotated[
    Annotated[SearchLogUniform, Tag("log_uniform")]
    | Annotated[SearchUniform, Tag("uniform")]
    | Annotated[SearchInt, Tag("int")]
    | Annotated[SearchChoice, Tag("choice")],
    Discriminator(
        _distribution_kind,
        custom_error_type="distribution_kind",
        custom_error_message='expected one of {"log_uniform": [low, high]}, {"uniform": [low, high]},'
        ' {"int": [low, high]} or {"choice": [...]}',
    ),
]
SpaceKey = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")]


def edge_values(distribution: Distribution) -> list[Any]:
    """The values a distribution reaches at its edges (every value, for a choice): checked against the spec."""
    if isinstance(distribution, SearchLogUniform):
        return list(distribution.log_uniform)
    if isinstance(distribution, SearchUniform):
        return list(distribution.uniform)
    if isinstance(distribution, SearchInt):
        return list(distribution.int)
    return list(distribution.choice)


def key_path(key: str) -> tuple[str, ...]:
    """The run-spec path a space key names: `lr` is optimizer.lr, `optimizer` the optimizer's name."""
    return SHORTHANDS.get(key, tuple(key.split(".")))


def apply_params(base: RunSpec, params: dict[str, Any]) -> RunSpec:
    """The run spec of one trial: `base` with each key's value set. ValueError (pydantic's) for an invalid mix.

    A chosen optimizer starts from its own defaults (the base optimizer's other settings are for the base's
    optimizer); then the other keys land at their paths.
    """
    spec = base.to_json()
    for key, value in sorted(params.items(), key=lambda kv: key_path(kv[0]) != SHORTHANDS["optimizer"]):
        path = key_path(key)
        if path == SHORTHANDS["optimizer"]:
            spec["optimizer"] = {"name": value}
            continue
        node = spec
        for part in path[:-1]:
            node = node.setdefault(part, {})  # a plugin model's params may be left out of the base when empty
        node[path[-1]] = value
    return RunSpec.model_validate(spec)


def _invalid(loc: tuple[str | int, ...], msg: str, value: Any) -> ValidationError:
    """A check across fields, reported at the field it is about (a plain ValueError would point at the body)."""
    error = InitErrorDetails(type=PydanticCustomError("value_error", msg), loc=loc, input=value)
    return ValidationError.from_exception_data("SearchCreate", [error])


def _leaf_type(annotation: Any) -> str:
    """float, int, bool, name (a literal or string) or other (a list, a pair, a nested object)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType):
        kinds = {_leaf_type(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else "other"
    if typing.get_origin(annotation) is Literal or annotation is str:
        return "name"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "other"
    return {bool: "bool", int: "int", float: "float"}.get(annotation, "other")


def _leaf(model: BaseModel, path: tuple[str, ...], shown: str) -> str:
    """The leaf type at `path` inside `model`; ValueError saying what is wrong with the path."""
    node: Any = model
    for i, part in enumerate(path):
        fields = type(node).model_fields if isinstance(node, BaseModel) else {}
        if i == len(path) - 2 and part == "params" and isinstance(getattr(node, part, None), dict):
            if not re.fullmatch(PARAM_NAME, path[-1]):
                raise ValueError(f"{shown}: `{path[-1]}` is not a parameter name (a Python identifier)")
            return PLUGIN_PARAM  # a plugin factory's argument: any value it takes (checked against the offers)
        if part not in fields:
            where = ".".join(path[:i]) or "the run spec"
            kind = getattr(node, "name", getattr(node, "kind", None)) if i else None
            owner = f"{where} ({kind})" if isinstance(kind, str) else where
            raise ValueError(f"`{part}` is not a field of {owner}: {shown} does not exist")
        if i == len(path) - 1:
            kind = _leaf_type(fields[part].annotation)
            if kind == "other":
                raise ValueError(f"{shown} is not a number, flag or name: only those can be searched")
            return kind
        node = getattr(node, part)
    raise AssertionError("unreachable: a path has at least one part")


WANTS = {"log_uniform": ("float",), "uniform": ("float",), "int": ("int",)}
PLUGIN_PARAM = "plugin parameter"  # _leaf's kind for model.params.<name>: every distribution may draw it


def check_space(base: RunSpec, space: dict[str, Distribution]) -> None:
    """Raise a ValidationError at ("space", key) for the first key `base` cannot take (see the module doc)."""
    by_path: dict[tuple[str, ...], str] = {}
    optimizer_key = next((k for k in space if key_path(k) == SHORTHANDS["optimizer"]), None)
    optimizers: list[str] = [base.optimizer.name]
    if optimizer_key is not None:
        if optimizer_key != "optimizer":
            raise _invalid(("space", optimizer_key), FIXED[SHORTHANDS["optimizer"]], optimizer_key)
        chosen = space[optimizer_key]
        if not isinstance(chosen, SearchChoice):
            raise _invalid(("space", "optimizer"), "the optimizer is searched with a choice of names", None)
        unknown = [v for v in chosen.choice if not (isinstance(v, str) and v in OPTIMIZER_SCHEMAS)]
        if unknown:
            raise _invalid(
                ("space", "optimizer"),
                f"{unknown[0]!r} is not an optimizer (one of {', '.join(OPTIMIZER_SCHEMAS)})",
                chosen.choice,
            )
        optimizers = [str(v) for v in chosen.choice]
    for key, distribution in space.items():
        loc, given, path = ("space", key), distribution.model_dump(mode="json"), key_path(key)
        if key == optimizer_key:
            by_path[path] = key
            continue
        if path in by_path:
            raise _invalid(loc, f"names the same field as `{by_path[path]}`", given)
        by_path[path] = key
        fixed = next((why for p, why in FIXED.items() if path[: len(p)] == p), None)
        if fixed:
            raise _invalid(loc, f"{'.'.join(path)} is fixed in a search ({fixed})", given)
        kind = _distribution_kind(distribution)
        assert kind is not None
        # the spec each edge value is checked in: the base, or each optimizer the search may choose
        variants = [base]
        if path[0] == "optimizer" and optimizer_key is not None:
            variants = [apply_params(base, {"optimizer": name}) for name in optimizers]
        for spec in variants:
            try:
                leaf = _leaf(spec, path, f"`{key}`")
            except ValueError as exc:
                raise _invalid(loc, str(exc), given) from None
            if kind in WANTS and leaf != PLUGIN_PARAM and leaf not in WANTS[kind]:
                raise _invalid(loc, f"{kind} draws numbers for a {leaf} field; use a choice", given)
            for value in edge_values(distribution):
                params = {key: value, **({"optimizer": spec.optimizer.name} if optimizer_key else {})}
                try:
                    apply_params(base, params)
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
                    within = f" with {spec.optimizer.name}" if optimizer_key and path[0] == "optimizer" else ""
                    raise _invalid(loc, f"{value!r} is not a valid {'.'.join(path)}{within}: {reason}", given) from None


# --- early stopping by successive halving -------------------------------------------------------


class EarlyStopping(Strict):
    """Asynchronous successive halving (ASHA, Li et al. 2020): at each rung (grace_epochs, grace_epochs x
    reduction_factor, ... epochs) a run continues only if it is in the top 1/reduction_factor of the runs that
    reached that rung; runs that reach a rung together (one fused pack) keep the top n // reduction_factor,
    at least one. A run stopped this way ends `stopped`, its curve kept."""

    kind: Literal["asha"] = "asha"
    metric: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="Compared at each rung: higher accuracy or lower loss is better."
    )
    grace_epochs: int = Field(1, ge=1, le=MAX_EPOCHS, description="The first rung: every run trains this long.")
    reduction_factor: int = Field(3, ge=2, le=16, description="Keep the top 1/reduction_factor at each rung.")


def check_grace(early_stopping: EarlyStopping | None, epochs: int, at: tuple[str, ...]) -> None:
    """A first rung at or past the last epoch stops nothing: a 422, not a silent full grid."""
    if early_stopping is not None and early_stopping.grace_epochs >= epochs:
        raise _invalid(
            (*at, "grace_epochs"),
            f"must be less than base.epochs ({epochs}): no run would be judged before it finishes",
            early_stopping.grace_epochs,
        )


# --- the request ---------------------------------------------------------------------------------


class SearchCreate(Strict):
    """Ask an Optuna sampler for `trials` configurations of `base`, `parallel` at a time, trained as runs."""

    name: str = Field("search", min_length=1, max_length=200)
    base: RunSpec = Field(default_factory=RunSpec, description="A run spec; each trial sets the space's keys in it.")
    space: dict[SpaceKey, Distribution] = Field(
        min_length=1,
        max_length=MAX_SPACE_KEYS,
        description=(
            "Dotted paths into the run spec (`optimizer.momentum`, `model.width`), with `lr` for optimizer.lr and"
            " `optimizer` for a choice of optimizers (each with its defaults)."
        ),
        examples=[{"lr": {"log_uniform": [1e-5, 1]}, "optimizer": {"choice": ["sgd", "adam"]}}],
    )
    trials: int = Field(20, ge=1, le=MAX_TRIALS)
    parallel: int = Field(4, ge=1, le=MAX_PARALLEL, description="Trials trained at once (one fused pack if it can).")
    sampler: Literal["tpe", "random", "cmaes"] = Field(
        "tpe", description="Optuna's TPESampler, RandomSampler or CmaEsSampler (numbers only: no choice keys)."
    )
    metric: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy", description="What a trial scores: its best value over the epochs it trained."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the sampler.")
    early_stopping: EarlyStopping | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchCreate:
        check_space(self.base, self.space)
        if self.sampler == "cmaes":
            choices = [k for k, d in self.space.items() if isinstance(d, SearchChoice)]
            if choices:
                raise _invalid(
                    ("sampler",),
                    f"CMA-ES samples numbers only and `{choices[0]}` is a choice: use tpe or random",
                    self.sampler,
                )
        check_grace(self.early_stopping, self.base.epochs, ("early_stopping",))
        return self

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.metric == "val_accuracy" else "minimize"

    def plugin_keys(self) -> list[str]:
        """The space keys that set a plugin model's factory arguments (model.params.<name>)."""
        return [k for k in self.space if key_path(k)[:2] == ("model", "params")]

    def model_variants(self) -> list[RunSpec]:
        """The base, and specs with the plugin arguments the space sets at their edge values (the j-th edge of
        every key at once): what the API checks against the models the live workers offer."""
        keys = self.plugin_keys()
        if not keys:
            return [self.base]
        edges = {k: edge_values(self.space[k]) for k in keys}
        variants = []
        for j in range(max(len(values) for values in edges.values())):
            try:
                variants.append(apply_params(self.base, {k: v[min(j, len(v) - 1)] for k, v in edges.items()}))
            except ValidationError:  # edges valid alone that clash together: Optuna's asks tell that trial failed
                continue
        return variants


# --- responses -----------------------------------------------------------------------------------

SearchStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialState = Literal["running", "complete", "pruned", "failed", "waiting"]


class SearchCreated(BaseModel):
    id: str
    study_name: str = Field(
        description="The Optuna study in lrlab's database: optuna.load_study(study_name=..., storage=<its URL>)."
    )


class TrialPublic(BaseModel):
    """One trial: what Optuna asked and was told, and the run that trained it."""

    number: int = Field(description="The trial's number in the study.")
    state: TrialState = Field(description="Optuna's: complete, pruned (stopped early or diverged), failed, running.")
    params: dict[str, Any]
    value: float | None = Field(None, description="What the study was told (pruned: the last epoch's value).")
    run_id: str | None = Field(None, description="None for a moment after it was asked, or when it made no valid run.")
    status: RunStatus | None = None
    epochs_completed: int | None = None
    finished_at: datetime | None = None


class SearchPublic(BaseModel):
    id: str
    name: str
    status: SearchStatus
    spec: SearchCreate
    study_name: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    cancel_requested: bool = False
    trials: list[TrialPublic] = Field(default_factory=list, description="Empty in GET /v1/searches (the list).")
    best: TrialPublic | None = Field(None, description="The best complete trial so far (pruned ones trained less).")
    importances: dict[str, float] = Field(
        default_factory=dict, description="Optuna's parameter importances over the complete trials (two at least)."
    )


class SearchesPublic(BaseModel):
    data: list[SearchPublic]
    next_cursor: str | None = None
