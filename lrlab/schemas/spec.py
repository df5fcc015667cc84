"""The run spec: dataset, model, optimizer, schedule and loop settings, with their bounds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from lrlab.schemas.layers import SequentialSpec
from lrlab.schemas.plugins import PLUGIN_NAME, Params, PluginModelSpec
from lrlab.schemas.strict import Strict

MAX_LR = 1000.0
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
BUILTIN_DATASETS = ("digits", "mnist1d", "spirals", "blobs")
Device = Literal["auto", "cpu", "cuda"]


Lr = Annotated[
    float,
    Field(gt=0, le=MAX_LR, allow_inf_nan=False, description="Learning rate; a huge lr is an experiment, not an error."),
]
WeightDecay = Annotated[float, Field(ge=0, le=10, allow_inf_nan=False, description="L2 penalty (decoupled in AdamW).")]
Eps = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, description="Term added to the denominator.")]
Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


# --- datasets -----------------------------------------------------------------------------------


class DatasetRef(Strict):
    """A built-in or plugin dataset by `name`, an uploaded one by `id`, or a file or image folder by `path` under
    the root."""

    name: str | None = Field(
        None,
        pattern=PLUGIN_NAME,
        description=(
            "A built-in dataset (digits, mnist1d, spirals, blobs), or one a plugin installed on the workers offers"
            " (GET /v1/catalog lists them)."
        ),
    )
    # Left out of the stored spec when empty, so specs naming a built-in keep their earlier form.
    params: Params = Field(
        default_factory=dict,
        exclude_if=lambda value: not value,
        description="A plugin dataset's factory arguments (GET /v1/catalog lists them).",
    )
    path: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-/ ]*$",
        description="Relative path under the dataset root: a .npz with x and y, or a folder of class sub-folders.",
    )
    # Left out of the stored spec when unset, so specs naming a built-in or a path keep their earlier form.
    id: str | None = Field(
        None,
        min_length=1,
        max_length=36,
        exclude_if=lambda value: value is None,
        description="An uploaded dataset's id (POST /v1/datasets); the caller's own.",
    )
    image_size: int = Field(32, ge=4, le=256, description="Images are resized to image_size x image_size.")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and any(part in ("..", "") for part in value.strip("/").split("/")):
            raise ValueError("path must stay inside the dataset root (no '..' or empty parts)")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> DatasetRef:
        if sum(v is not None for v in (self.name, self.path, self.id)) != 1:
            raise ValueError(
                "give exactly one of `name` (a built-in or plugin dataset), `id` (an uploaded one) or `path` (a file"
                " under the dataset root)"
            )
        return self

    @field_validator("params")
    @classmethod
    def _params_for_plugins(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name")
        if value and (name is None or name in BUILTIN_DATASETS):
            raise ValueError("params are for a plugin's dataset; a built-in, uploaded or file dataset takes none")
        return value

    @property
    def label(self) -> str:
        if self.id is not None:
            return f"upload:{self.id}"
        return self.name or f"file:{self.path}"


# --- models -------------------------------------------------------------------------------------


class MlpSpec(Strict):
    name: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [128, 128], min_length=1, max_length=8, description="Hidden layer widths."
    )
    dropout: float = Field(0.0, ge=0, le=0.9)


class CnnSpec(Strict):
    name: Literal["cnn"]
    channels: int = Field(32, ge=1, le=256, description="Channels of each conv block.")
    depth: int = Field(2, ge=1, le=6, description="Number of conv blocks.")


class ResnetSpec(Strict):
    name: Literal["resnet"]
    width: int = Field(16, ge=4, le=128, description="Channels of the stem and residual blocks.")
    blocks: int = Field(2, ge=1, le=8, description="Number of residual blocks.")


def _model_kind(value: Any) -> str | None:
    """Ours by name; any other name is a plugin's (checked against what live workers offer after parsing)."""
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if not isinstance(name, str):
        return None
    return name if name in ("mlp", "cnn", "resnet", "sequential") else "plugin"


ModelSpec = Annotated[
    Annotated[MlpSpec, Tag("mlp")]
    | Annotated[CnnSpec, Tag("cnn")]
    | Annotated[ResnetSpec, Tag("resnet")]
    | Annotated[SequentialSpec, Tag("sequential")]
    | Annotated[PluginModelSpec, Tag("plugin")],
    Discriminator(
        _model_kind,
        custom_error_type="model_name",
        custom_error_message="a model needs a `name`: mlp, cnn, resnet, sequential, or a plugin's (GET /v1/catalog)",
    ),
]


# --- optimizers (torch's names and defaults) ----------------------------------------------------


class SgdSpec(Strict):
    name: Literal["sgd"]
    lr: Lr = 1e-3
    momentum: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    dampening: Unit = 0.0
    nesterov: bool = False
    weight_decay: WeightDecay = 0.0

    @field_validator("nesterov")
    @classmethod
    def _nesterov(cls, value: bool, info: ValidationInfo) -> bool:
        if value and (info.data.get("momentum", 0.0) <= 0 or info.data.get("dampening", 0.0) != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening 0")
        return value


class RmspropSpec(Strict):
    name: Literal["rmsprop"]
    lr: Lr = 1e-2
    alpha: Unit = Field(0.99, description="Smoothing constant of the squared-gradient average.")
    eps: Eps = 1e-8
    momentum: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    centered: bool = False
    weight_decay: WeightDecay = 0.0


class AdamSpec(Strict):
    name: Literal["adam"]
    lr: Lr = 1e-3
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), strict=False)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    amsgrad: bool = False


class AdamwSpec(AdamSpec):
    name: Literal["adamw"]  # type: ignore[assignment]
    weight_decay: WeightDecay = 1e-2


class AdagradSpec(Strict):
    name: Literal["adagrad"]
    lr: Lr = 1e-2
    lr_decay: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    weight_decay: WeightDecay = 0.0
    eps: Eps = 1e-10
    initial_accumulator_value: float = Field(0.0, ge=0, le=10, allow_inf_nan=False)


class AdadeltaSpec(Strict):
    name: Literal["adadelta"]
    lr: Lr = Field(1.0, description="Multiplies the update; 1.0 is Adadelta's natural value.")
    rho: Unit = 0.9
    eps: Eps = 1e-6
    weight_decay: WeightDecay = 0.0


OptimizerSpec = Annotated[
    SgdSpec | RmspropSpec | AdamSpec | AdamwSpec | AdagradSpec | AdadeltaSpec, Field(discriminator="name")
]
OPTIMIZER_SCHEMAS: dict[str, type[BaseModel]] = {
    "sgd": SgdSpec,
    "rmsprop": RmspropSpec,
    "adam": AdamSpec,
    "adamw": AdamwSpec,
    "adagrad": AdagradSpec,
    "adadelta": AdadeltaSpec,
}


# --- schedules (epoch-level) --------------------------------------------------------------------

Warmup = Annotated[
    int, Field(ge=0, le=MAX_EPOCHS, description="Linear ramp: epoch k <= w trains at k/w of the schedule's first lr.")
]
Gamma = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False, description="Multiplicative factor.")]


def _increasing(values: list[int]) -> list[int]:
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError("must be strictly increasing")
    return values


class ConstantSchedule(Strict):
    kind: Literal["constant"] = "constant"
    warmup_epochs: Warmup = 0


class StepSchedule(Strict):
    kind: Literal["step"]
    step_size: int = Field(ge=1, le=MAX_EPOCHS, description="Decay every step_size epochs.")
    gamma: Gamma = 0.1
    warmup_epochs: Warmup = 0


class MultistepSchedule(Strict):
    kind: Literal["multistep"]
    milestones: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        min_length=1, max_length=100, description="Completed-epoch counts after which lr is multiplied by gamma."
    )
    gamma: Gamma = 0.1
    warmup_epochs: Warmup = 0

    @field_validator("milestones")
    @classmethod
    def _check(cls, value: list[int]) -> list[int]:
        return _increasing(value)


class PiecewiseSchedule(Strict):
    kind: Literal["piecewise"]
    boundaries: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = Field(
        max_length=1000, description="Completed-epoch counts where the next value starts."
    )
    values: list[Lr] = Field(
        min_length=1, max_length=1001, description="Absolute lrs, one more than boundaries; replaces optimizer.lr."
    )
    warmup_epochs: Warmup = 0

    @field_validator("boundaries")
    @classmethod
    def _check(cls, value: list[int]) -> list[int]:
        return _increasing(value)

    @model_validator(mode="after")
    def _lengths(self) -> PiecewiseSchedule:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError(f"values needs {len(self.boundaries) + 1} entries (one more than boundaries)")
        return self


class ExponentialSchedule(Strict):
    kind: Literal["exponential"]
    gamma: Gamma
    warmup_epochs: Warmup = 0


class CosineSchedule(Strict):
    """torch's CosineAnnealingLR stepped once per epoch: after e epochs of the schedule the lr is
    eta_min + (lr - eta_min)(1 + cos(pi e / t_max)) / 2. Past t_max it climbs back (as torch's does), to lr at
    2 t_max, and repeats; it does not hold eta_min."""

    kind: Literal["cosine"]
    t_max: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="Epochs from lr down to eta_min (half the period); default the run's epochs after warmup.",
    )
    eta_min: float = Field(0.0, ge=0, le=MAX_LR, allow_inf_nan=False)
    warmup_epochs: Warmup = 0


ScheduleSpec = Annotated[
    ConstantSchedule | StepSchedule | MultistepSchedule | PiecewiseSchedule | ExponentialSchedule | CosineSchedule,
    Field(discriminator="kind"),
]
SCHEDULE_SCHEMAS: dict[str, type[BaseModel]] = {
    "constant": ConstantSchedule,
    "step": StepSchedule,
    "multistep": MultistepSchedule,
    "piecewise": PiecewiseSchedule,
    "exponential": ExponentialSchedule,
    "cosine": CosineSchedule,
}


# --- the run spec -------------------------------------------------------------------------------


class DivergenceSpec(Strict):
    """A run stops as `diverged` when (every step) its loss is NaN/inf or its smoothed training loss exceeds
    `factor` x the first loss, or when (after each epoch) it has collapsed back towards chance: it had learned
    (best val accuracy at least a tenth of the way from chance to 1), then for 2 epochs in a row both val
    accuracy and val loss kept less than half of their best gain over chance (chance: predicting the training
    labels' frequencies). One bad epoch that recovers, or overfitting (val loss up, accuracy held), is not
    a divergence."""

    enabled: bool = True
    factor: float = Field(4.0, gt=1, le=1e6, allow_inf_nan=False)


class RunSpec(Strict):
    """One training run. Every field has a default: `{}` trains the digits MLP with Adam at 1e-3."""

    dataset: DatasetRef = Field(default_factory=lambda: DatasetRef(name="digits"))
    model: ModelSpec = Field(default_factory=MlpSpec)
    optimizer: OptimizerSpec = Field(default_factory=lambda: AdamSpec(name="adam"))
    schedule: ScheduleSpec = Field(default_factory=ConstantSchedule)
    epochs: int = Field(5, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Device = Field("auto", description="auto: a GPU worker when one is live, else CPU.")
    divergence: DivergenceSpec = Field(default_factory=lambda: DivergenceSpec())
    patience: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="Early stopping on val_loss.")
    # Left out of the stored spec when unset, so earlier specs keep their form.
    split_seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        exclude_if=lambda value: value is None,
        description=(
            "Seed of the train/validation split (and its standardisation); default `seed`. Runs that must be"
            " scored on the same validation samples with different initial weights share it."
        ),
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule_default(cls, value: Any) -> Any:
        return {"kind": "constant"} if value is None else value

    @model_validator(mode="after")
    def _warmup_fits(self) -> RunSpec:
        if self.schedule.warmup_epochs >= self.epochs:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be less than epochs ({self.epochs}):"
                " the schedule itself would never start"
            )
        return self

    @property
    def data_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def to_json(self) -> dict[str, Any]:
        """The canonical stored form: every default filled in, plain JSON types."""
        return self.model_dump(mode="json")
