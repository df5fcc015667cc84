"""lrlab's training core: configs in, curves out; pure PyTorch, usable from a notebook without the service."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainer.config import DatasetConfig, DivergenceConfig, ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig
from trainer.optimizers import OPTIMIZERS
from trainer.schedules import SCHEDULES, lr_at

if TYPE_CHECKING:
    from trainer.data import DATASETS, load_dataset
    from trainer.loop import (
        Checkpoint,
        EpochPoint,
        TrainResult,
        checkpoint_from_bytes,
        checkpoint_to_bytes,
        resolve_device,
        train,
    )
    from trainer.lr_finder import LrFinderResult, LrPoint, lr_range_test
    from trainer.models import MODELS, build_model
    from trainer.optim import build_optimizer
    from trainer.population import MemberResult, fusable, plan_groups, train_population

# The configs, schedules and optimizer declarations are plain Python; everything else imports torch (about
# a second and a half), so it loads on first use and `from trainer import RunConfig` stays cheap.
_LAZY = {
    "DATASETS": "trainer.data",
    "load_dataset": "trainer.data",
    "Checkpoint": "trainer.loop",
    "checkpoint_from_bytes": "trainer.loop",
    "checkpoint_to_bytes": "trainer.loop",
    "EpochPoint": "trainer.loop",
    "TrainResult": "trainer.loop",
    "resolve_device": "trainer.loop",
    "train": "trainer.loop",
    "LrFinderResult": "trainer.lr_finder",
    "LrPoint": "trainer.lr_finder",
    "lr_range_test": "trainer.lr_finder",
    "MODELS": "trainer.models",
    "build_model": "trainer.models",
    "build_optimizer": "trainer.optim",
    "MemberResult": "trainer.population",
    "fusable": "trainer.population",
    "plan_groups": "trainer.population",
    "train_population": "trainer.population",
}

__all__ = [
    "DATASETS",
    "MODELS",
    "OPTIMIZERS",
    "SCHEDULES",
    "Checkpoint",
    "DatasetConfig",
    "DivergenceConfig",
    "EpochPoint",
    "LrFinderResult",
    "LrPoint",
    "MemberResult",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "checkpoint_from_bytes",
    "checkpoint_to_bytes",
    "fusable",
    "load_dataset",
    "lr_at",
    "lr_range_test",
    "plan_groups",
    "resolve_device",
    "train",
    "train_population",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
