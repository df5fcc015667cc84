"""Frozen run configuration for the trainer and its construction from the service's JSON run spec."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetConfig:
    name: str | None = "digits"  # built-in: "digits", "mnist1d", "spirals", "blobs"; or a plugin's (trainer.plugins)
    path: str | None = None  # user data relative to data_root: .npz with x, y or a folder per class
    image_size: int = 32  # image-folder data is resized to image_size x image_size
    val_fraction: float = 0.2
    # a plugin dataset's factory arguments; compared, not hashed (a dict), so configs still key a cache
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.name is None and self.path is None:
            raise ValueError("A dataset needs a name or a path")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"Invalid val_fraction: {self.val_fraction}")
        if not 1 <= self.image_size <= 1024:
            raise ValueError(f"Invalid image_size: {self.image_size}")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # "mlp" | "cnn" | "resnet" | "sequential", or a plugin's (trainer.plugins)
    # mlp: hidden, dropout; cnn: channels, depth; resnet: width, blocks; sequential: layers; a plugin: its
    # factory's keyword arguments (checked by build_model)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"  # "sgd" | "rmsprop" | "adam" | "adamw" | "adagrad" | "adadelta"
    lr: float = 1e-3
    # torch's own names (momentum, betas, eps, ...); missing ones take torch's defaults
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "constant"  # constant | step | multistep | piecewise | exponential | cosine
    params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 0


@dataclass(frozen=True)
class DivergenceConfig:
    enabled: bool = True
    factor: float = 4.0  # smoothed loss above factor x the first batch's loss -> diverged
    smoothing: float = 0.9  # EMA coefficient of the smoothed loss

    def __post_init__(self) -> None:
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"Invalid divergence factor: {self.factor}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"Invalid divergence smoothing: {self.smoothing}")


@dataclass(frozen=True)
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 5
    batch_size: int = 64
    seed: int = 0  # the initial weights and the data order; also the split unless split_seed says otherwise
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    patience: int | None = None  # early stopping after this many epochs without a better val_loss
    split_seed: int | None = None  # the train/validation split and its standardisation; None: `seed`

    @property
    def data_seed(self) -> int:
        """The seed load_dataset splits with: runs sharing it are scored on the same validation samples."""
        return self.seed if self.split_seed is None else self.split_seed

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"Invalid epochs: {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"Invalid batch_size: {self.batch_size}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"Invalid patience: {self.patience}")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> RunConfig:
        """Build a config from the API's (already validated) run spec; unknown top-level keys are ignored."""
        divergence = spec.get("divergence") or {}
        return cls(
            dataset=_dataset_from_spec(spec.get("dataset", "digits")),
            model=_model_from_spec(spec.get("model", "mlp")),
            optimizer=OptimizerConfig(**_split_params(spec.get("optimizer", "adam"), ("name", "lr"))),
            schedule=ScheduleConfig(
                **_split_params(spec.get("schedule") or "constant", ("kind", "warmup_epochs"), "kind")
            ),
            epochs=int(spec.get("epochs", 5)),
            batch_size=int(spec.get("batch_size", 64)),
            seed=int(spec.get("seed", 0)),
            divergence=DivergenceConfig(**divergence),
            patience=spec.get("patience"),
            split_seed=spec.get("split_seed"),
        )


def _model_from_spec(value: str | dict[str, Any]) -> ModelConfig:
    """A plugin model comes as {"name", "params"} (its factory's arguments); ours carry their fields beside the name."""
    if isinstance(value, dict) and isinstance(value.get("params"), dict):
        return ModelConfig(name=value["name"], params=dict(value["params"]))
    return ModelConfig(**_split_params(value, ("name",)))


def _dataset_from_spec(value: str | dict[str, Any]) -> DatasetConfig:
    if isinstance(value, str):
        return DatasetConfig(name=value)
    # a user file is named by its path alone; the default name "digits" must not shadow it
    name = value.get("name", None if value.get("path") else "digits")
    return DatasetConfig(name=name, **{k: v for k, v in value.items() if k != "name"})


def _split_params(value: str | dict[str, Any], top: tuple[str, ...], key: str = "name") -> dict[str, Any]:
    """{"name": "adam", "lr": 0.1, "eps": 1e-8} -> {"name": "adam", "lr": 0.1, "params": {"eps": 1e-8}}."""
    if isinstance(value, str):
        return {key: value}
    fields = {k: v for k, v in value.items() if k in top}
    fields["params"] = {k: v for k, v in value.items() if k not in top}
    return fields
