"""Fusability is decided by one rule: the trainer's why_not_fusable, with the service's torch-free copy of its
per-run part (lrlab.runs.fusing.fusable_spec) held to it."""

from __future__ import annotations

from typing import Any

import pytest

from lrlab.catalog import MODELS
from lrlab.runs import fusing
from lrlab.schemas.spec import OPTIMIZER_SCHEMAS, RunSpec
from trainer.config import RunConfig
from trainer.population import plan
from trainer.population.plan import why_not_fusable

MODEL_SPECS: list[dict[str, Any]] = [
    {"name": "mlp"},
    {"name": "mlp", "hidden": [16], "dropout": 0.0},
    {"name": "mlp", "dropout": 0.1},
    {"name": "mlp", "hidden": [8, 8], "dropout": 0.9},
    {"name": "cnn"},
    {"name": "cnn", "channels": 4, "depth": 3},
    {"name": "resnet"},
    {"name": "resnet", "width": 4, "blocks": 1},
    {"name": "sequential", "layers": ["flatten", "linear"]},
    {"name": "sequential", "layers": ["flatten", {"type": "dropout", "p": 0.0}, "linear"]},
    {"name": "sequential", "layers": ["flatten", {"type": "dropout"}, "linear"]},
    {"name": "sequential", "layers": [{"type": "residual", "layers": [{"type": "dropout", "p": 0.1}]}, "linear"]},
]
# A plugin's model: both sides let it through the per-run rule (only trying it tells: test_stackable.py).
PLUGIN_SPECS: list[dict[str, Any]] = [{"name": "tiny-transformer", "params": {"width": 8}}, {"name": "any-model"}]


def test_the_same_models_fuse() -> None:
    assert fusing.FUSABLE_MODELS == plan.FUSABLE_MODELS
    assert {spec["name"] for spec in MODEL_SPECS} == set(MODELS)  # every model the service offers is probed


@pytest.mark.parametrize("model", MODEL_SPECS + PLUGIN_SPECS, ids=[str(m) for m in MODEL_SPECS + PLUGIN_SPECS])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_SCHEMAS))
def test_service_and_trainer_agree_on_one_run(model: dict[str, Any], optimizer: str) -> None:
    spec = RunSpec.model_validate({"model": model, "optimizer": {"name": optimizer}})
    config = RunConfig.from_spec(spec.to_json())
    assert fusing.fusable_spec(spec) == (why_not_fusable([config]) is None)
    # a population repeats one run's model: what one run says holds for any number of its copies
    assert fusing.fusable_spec(spec) == (why_not_fusable([config] * 3) is None)


def test_runs_that_fuse_alone_may_not_fuse_together() -> None:
    """The rest of the rule needs the pack in hand: the service cannot (and does not) decide it."""
    runs = [RunSpec.model_validate({"model": {"name": "mlp", "hidden": [h]}}) for h in (8, 16)]
    assert all(fusing.fusable_spec(s) for s in runs)
    reason = why_not_fusable([RunConfig.from_spec(s.to_json()) for s in runs])
    assert reason is not None and "member 1 has model" in reason
