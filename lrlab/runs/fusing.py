"""Which work trains fused (its runs stacked into one population on a worker): one rule, two choices made with it.

`fusable_spec` is the torch-free copy of the trainer's rule for one run (trainer.population.plan's
why_not_fusable_model: a model the engine stacks, no dropout), held to it by a parity test. The rest of the
trainer's rule (one dataset, one model for the whole pack) is checked by the worker, with the pack in hand,
before it fuses one; a pack that fails it is sent as separate runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from lrlab.broker import has_live_gpu_worker
from lrlab.schemas.spec import RunSpec

FUSABLE_MODELS = frozenset({"mlp", "cnn", "resnet"})
MAX_PACK_MEMBERS = 16  # one progress writer (and database connection) per member on the worker


class NotFusable(ValueError):
    """`execution: fused` asked for a model the fused engine does not stack."""


def fusable_spec(spec: RunSpec) -> bool:
    """Whether the fused engine stacks this run's model (the trainer has the final word on the worker)."""
    model = spec.model
    return model.name in FUSABLE_MODELS and not getattr(model, "dropout", 0.0)


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
    """`fused` or `distributed` for a population (its members share one model); NotFusable for a bad `fused`."""
    fusable = _all_fusable([base])
    if requested == "fused" and not fusable:
        raise NotFusable("fused execution needs a model the fused engine stacks (no dropout)")
    if requested == "auto":
        return "fused" if fusable else "distributed"
    return requested
