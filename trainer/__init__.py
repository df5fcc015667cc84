"""lrlab's training core: configs in, curves out; pure PyTorch, usable from a notebook without the service."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainer.config import DatasetConfig, DivergenceConfig, ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig
from trainer.optimizers import OPTIMIZERS
from trainer.schedules import SCHEDULES, lr_at

if TYPE_CHECKING:
    from trainer.checkpoint import Checkpoint, checkpoint_from_bytes, checkpoint_to_bytes, exploit
    from trainer.data import DATASETS, load_dataset
    from trainer.epochs import EpochPoint, TrainResult
    from trainer.loop import train
    from trainer.lr_finder import LrFinderResult, LrPoint, lr_range_test
    from trainer.models import MODELS, build_model
    from trainer.optim import build_optimizer
    from trainer.population import fusable, plan_groups, train_population, why_not_fusable
    from trainer.setup import resolve_device

# The configs, schedules and optimizer declarations are plain Python; everything else imports torch (about
# a second and a half), so it loads on first use and `from trainer import RunConfig` stays cheap.
_LAZY = {
    "Checkpoint": "trainer.checkpoint",
    "checkpoint_from_bytes": "trainer.checkpoint",
    "checkpoint_to_bytes": "trainer.checkpoint",
    "exploit": "trainer.checkpoint",
    "DATASETS": "trainer.data",
    "load_dataset": "trainer.data",
    "EpochPoint": "trainer.epochs",
    "TrainResult": "trainer.epochs",
    "train": "trainer.loop",
    "LrFinderResult": "trainer.lr_finder",
    "LrPoint": "trainer.lr_finder",
    "lr_range_test": "trainer.lr_finder",
    "MODELS": "trainer.models",
    "build_model": "trainer.models",
    "build_optimizer": "trainer.optim",
    "fusable": "trainer.population",
    "plan_groups": "trainer.population",
    "train_population": "trainer.population",
    "why_not_fusable": "trainer.population",
    "resolve_device": "trainer.setup",
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
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "checkpoint_from_bytes",
    "checkpoint_to_bytes",
    "exploit",
    "fusable",
    "load_dataset",
    "lr_at",
    "lr_range_test",
    "plan_groups",
    "resolve_device",
    "train",
    "train_population",
    "why_not_fusable",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
