"""RunConfig.from_spec turns the service's JSON run spec into frozen configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainer
from trainer.config import (
    DatasetConfig,
    DivergenceConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
)


def test_from_spec_full() -> None:
    spec = {
        "dataset": "digits",
        "model": {"name": "mlp", "hidden": [128, 128], "dropout": 0.0},
        "optimizer": {"name": "adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "amsgrad": False},
        "schedule": {"kind": "multistep", "milestones": [400, 700], "gamma": 0.1, "warmup_epochs": 2},
        "epochs": 1000,
        "batch_size": 32,
        "seed": 7,
        "device": "auto",
        "label": "ignored",
        "divergence": {"enabled": False, "factor": 8.0},
        "patience": 5,
    }
    assert RunConfig.from_spec(spec) == RunConfig(
        dataset=DatasetConfig("digits"),
        model=ModelConfig("mlp", {"hidden": [128, 128], "dropout": 0.0}),
        optimizer=OptimizerConfig("adam", 0.001, {"betas": [0.9, 0.999], "eps": 1e-08, "amsgrad": False}),
        schedule=ScheduleConfig("multistep", {"milestones": [400, 700], "gamma": 0.1}, warmup_epochs=2),
        epochs=1000,
        batch_size=32,
        seed=7,
        divergence=DivergenceConfig(enabled=False, factor=8.0),
        patience=5,
    )


def test_from_spec_minimal_uses_defaults() -> None:
    config = RunConfig.from_spec({"model": "cnn", "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": None})
    assert config.dataset == DatasetConfig("digits")
    assert config.model == ModelConfig("cnn")
    assert config.optimizer == OptimizerConfig("sgd", 0.1)
    assert config.schedule == ScheduleConfig()
    assert (config.epochs, config.batch_size, config.seed, config.patience) == (5, 64, 0, None)
    assert config.divergence == DivergenceConfig()


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ({"name": "spirals"}, DatasetConfig("spirals")),
        ({"path": "dogs", "image_size": 16}, DatasetConfig(name=None, path="dogs", image_size=16)),
        ({"name": "blobs", "val_fraction": 0.3}, DatasetConfig("blobs", val_fraction=0.3)),
    ],
)
def test_from_spec_dataset_forms(dataset: dict, expected: DatasetConfig) -> None:
    assert RunConfig.from_spec({"dataset": dataset}).dataset == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"epochs": 0}, "Invalid epochs: 0"),
        ({"batch_size": 0}, "Invalid batch_size: 0"),
        ({"patience": 0}, "Invalid patience: 0"),
        ({"dataset": {"name": "digits", "val_fraction": 1.0}}, "Invalid val_fraction: 1.0"),
        ({"divergence": {"smoothing": 1.0}}, "Invalid divergence smoothing: 1.0"),
    ],
)
def test_from_spec_rejects_out_of_range(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_spec(spec)


def test_import_trainer_config_without_torch() -> None:
    # configs, schedules and optimizer declarations are plain Python: whatever only builds a spec need not pay
    # for torch
    root = Path(trainer.__file__).resolve().parents[1]
    code = (
        "import sys, trainer; trainer.RunConfig.from_spec({}); trainer.lr_at; trainer.OPTIMIZERS['adam'].defaults;"
        " assert 'torch' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_import_trainer_exports_interface() -> None:
    names = [
        "RunConfig",
        "DatasetConfig",
        "ModelConfig",
        "OptimizerConfig",
        "ScheduleConfig",
        "EpochPoint",
        "TrainResult",
        "train",
        "resolve_device",
        "load_dataset",
        "build_model",
        "build_optimizer",
        "lr_at",
        "OPTIMIZERS",
        "DATASETS",
        "MODELS",
        "SCHEDULES",
        "Checkpoint",
        "exploit",
        "train_population",
        "why_not_fusable",
    ]
    for name in names:
        assert name in trainer.__all__ and getattr(trainer, name) is not None
    assert sorted(trainer.OPTIMIZERS) == ["adadelta", "adagrad", "adam", "adamw", "rmsprop", "sgd"]
    assert sorted(trainer.SCHEDULES) == ["constant", "cosine", "exponential", "multistep", "piecewise", "step"]
    assert sorted(trainer.DATASETS) == ["blobs", "digits", "mnist1d", "spirals"]
