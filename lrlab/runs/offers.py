"""What live workers offer beyond the built-ins (the plugins their heartbeats advertise), and run specs checked
against it, and a layer list against its dataset's shapes, before anything is queued. Torch-free: the API
imports no plugin and builds no model; a spec it cannot check here (a layer list on a file under the dataset
root or on a plugin's dataset, whose shapes only a worker sees) is checked by the worker, and fails there."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab.catalog import DATASETS, MODELS
from lrlab.models import Dataset, WorkerHeartbeat, utcnow
from lrlab.schemas.layers import SequentialSpec, ShapeError, infer_shapes
from lrlab.schemas.plugins import Offers, PluginModelSpec, check_plugin
from lrlab.schemas.spec import DatasetRef, ModelSpec
from lrlab.settings import Settings


class SpecProblem(ValueError):
    """A spec the service cannot take: `loc` is relative to the spec, ("model", "params", "width")."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


def live_offers(session: Session, settings: Settings) -> Offers:
    """The plugins of every worker with a fresh heartbeat (within LRLAB_HEARTBEAT_TTL_SECONDS)."""
    fresh = utcnow() - timedelta(seconds=settings.heartbeat_ttl_seconds)
    rows = session.execute(
        select(WorkerHeartbeat.hostname, WorkerHeartbeat.plugins).where(WorkerHeartbeat.last_seen_at >= fresh)
    )
    return Offers.gather((hostname, plugins) for hostname, plugins in rows)


@dataclass(frozen=True)
class _Shape:
    input_shape: tuple[int, ...]
    n_classes: int


def check_models(
    session: Session, owner: str, pairs: Sequence[tuple[DatasetRef, ModelSpec]], settings: Settings
) -> None:
    """Each (dataset, model) of the specs: a plugin's model or dataset some live worker offers, with parameters
    its factory takes; a layer list that fits its dataset (when the API knows the dataset's shape) within
    LRLAB_MAX_MODEL_PARAMETERS. SpecProblem for the first that does not."""
    offers: Offers | None = None
    seen: set[str] = set()
    for dataset, model in pairs:
        key = json.dumps([dataset.model_dump(mode="json"), model.model_dump(mode="json")], sort_keys=True)
        if key in seen:  # a grid repeats its base's model and dataset in every cell
            continue
        seen.add(key)
        if isinstance(model, PluginModelSpec) or (dataset.name is not None and dataset.name not in DATASETS):
            offers = offers or live_offers(session, settings)
        if isinstance(model, PluginModelSpec):
            assert offers is not None
            problem = check_plugin(offers, "model", model.name, model.params, MODELS)
            if problem is not None:
                raise SpecProblem(("model", *problem.loc), problem.msg)
        if dataset.name is not None and dataset.name not in DATASETS:
            assert offers is not None
            problem = check_plugin(offers, "dataset", dataset.name, dataset.params, DATASETS)
            if problem is not None:
                raise SpecProblem(("dataset", *problem.loc), problem.msg)
        if isinstance(model, SequentialSpec):
            shape = _shape_of(session, owner, dataset)
            if shape is not None:
                try:
                    infer_shapes(
                        model.layers,
                        shape.input_shape,
                        shape.n_classes,
                        max_parameters=settings.max_model_parameters,
                    )
                except ShapeError as e:
                    raise SpecProblem(("model", *e.loc), e.msg) from e


def _shape_of(session: Session, owner: str, dataset: DatasetRef) -> _Shape | None:
    """Per sample, as the model sees it, when the API knows it: a built-in or an upload (at its image_size)."""
    if dataset.name in DATASETS:
        meta = DATASETS[dataset.name]
        return _Shape(tuple(meta["input_shape"]), int(meta["n_classes"]))
    if dataset.id is not None:
        row = session.get(Dataset, dataset.id)
        if row is None or row.owner != owner:
            return None  # the caller's 404 says so
        shape = tuple(int(s) for s in row.input_shape)
        if row.kind == "images":
            shape = (shape[0], dataset.image_size, dataset.image_size)
        return _Shape(shape, int(row.n_classes))
    return None
