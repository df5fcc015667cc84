"""Which work trains fused (its runs stacked into one population on a worker): one rule, two choices made with it.

`fusable_spec` is the torch-free copy of the trainer's rule for one run (trainer.population.plan's
why_not_fusable_model: a model the engine stacks, no dropout), held to it by a parity test. The rest of the
trainer's rule (one dataset, one model for the whole pack) is checked by the worker, with the pack in hand,
before it fuses one; a pack that fails it is sent as separate runs, each saying why. A plugin's model passes
here: whether it stacks is only known by trying, which the worker does (trainer.population.stackable).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from lrlab.broker import has_live_gpu_worker
from lrlab.schemas.layers import Dropout, Layer, Residual, SequentialSpec
from lrlab.schemas.spec import RunSpec

FUSABLE_MODELS = frozenset({"mlp", "cnn", "resnet", "sequential"})  # all of ours: any other name is a plugin's
MAX_PACK_MEMBERS = 16  # one progress writer (and database connection) per member on the worker


class NotFusable(ValueError):
    """`execution: fused` asked for a model the fused engine does not stack."""


def fusable_spec(spec: RunSpec) -> bool:
    """Whether the fused engine stacks this run's model (the trainer has the final word on the worker)."""
    model = spec.model
    if isinstance(model, SequentialSpec):
        return not _has_dropout(model.layers)
    return not getattr(model, "dropout", 0.0)


def is_plugin(spec: RunSpec) -> bool:
    """A plugin's model: fusable_spec lets it through, but only the worker can tell, by trying."""
    return spec.model.name not in FUSABLE_MODELS


def _has_dropout(layers: Sequence[Layer]) -> bool:
    return any(
        (isinstance(layer, Dropout) and layer.p > 0) or (isinstance(layer, Residual) and _has_dropout(layer.layers))
        for layer in layers
    )


def _all_fusable(specs: Sequence[RunSpec]) -> bool:
    return all(fusable_spec(s) for s in specs)


def experiment_execution(session: Session, requested: str, specs: Sequence[RunSpec]) -> str:
    """`fused` or `separate` for a grid: `auto` fuses only on a live GPU worker and only runs the engine stacks;
    `fused` is taken at its word (a worker sends a pack it cannot fuse as separate runs)."""
    if requested == "separate" or len(specs) < 2:
        return "separate"
    if requested == "fused":
        return "fused"
    gpu = any(s.device != "cpu" for s in specs) and has_live_gpu_worker(session)
    return "fused" if gpu and _all_fusable(specs) else "separate"


def population_execution(requested: str, base: RunSpec) -> str:
    """`fused` or `distributed` for a population (its members share one model); NotFusable for a bad `fused`.
    `auto` leaves a plugin's model distributed: a population cannot fall back to separate runs once fused."""
    fusable = _all_fusable([base])
    if requested == "fused" and not fusable:
        raise NotFusable("fused execution needs a model the fused engine stacks (no dropout)")
    if requested == "auto":
        return "fused" if fusable and not is_plugin(base) else "distributed"
    return requested
