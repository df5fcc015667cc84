"""Experiments: a grid request becomes one validated, labelled run spec per cell, stored as member runs."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab.broker import choose_queue
from lrlab.models import Experiment, Run, utcnow
from lrlab.runs import store
from lrlab.runs.fusing import experiment_execution
from lrlab.schemas.experiments import ExperimentCreate, ExperimentPublic, MemberRun
from lrlab.schemas.runs import RunStatus
from lrlab.schemas.spec import OPTIMIZER_SCHEMAS, SCHEDULE_SCHEMAS, RunSpec


@dataclass(frozen=True)
class Cell:
    spec: RunSpec
    params: dict[str, Any]  # the grid values of this cell, readable (optimizer and schedule as short text)
    label: str  # the values that vary across the grid, "optimizer=adam lr=0.001"
    config: str  # the label without the seed: replicates of one configuration share it


class CellError(ValueError):
    def __init__(self, index: int, params: dict[str, Any], error: ValidationError | PathError) -> None:
        if isinstance(error, PathError):
            where, msg = error.path, str(error)
        else:
            first = error.errors()[0]
            where, msg = ".".join(str(p) for p in first["loc"]) or "spec", first["msg"]
        super().__init__(f"cell {index} ({describe(params)}): {where}: {msg}")
        self.index = index


class PathError(ValueError):
    def __init__(self, path: str, msg: str) -> None:
        super().__init__(msg)
        self.path = path


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """spec[a][b][c] = value for the path "a.b.c": every part but the last must name an object (a model given
    by name, "mlp", counts as {"name": "mlp"}; a plugin's `params` left out counts as {}); the last may be new
    there (a plugin's parameter)."""
    parts = path.split(".")
    node = spec
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and part in ("model", "dataset", "optimizer"):
            child = node[part] = {"name": child}
        elif child is None and part == "params":  # a plugin's arguments, left out of the spec while empty
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise PathError(path, f"{where} is {'not set' if child is None else 'not an object'}: {path} cannot be set")
        node = child
    node[parts[-1]] = value


def _short(model: BaseModel, key: str, skip: set[str]) -> str:
    """`sgd(momentum=0.9)`: the name plus the fields that differ from that schema's defaults."""
    schema = OPTIMIZER_SCHEMAS if key == "name" else SCHEDULE_SCHEMAS
    name = getattr(model, key)
    reference = schema[name].model_validate({key: name}) if key == "name" else None
    parts = []
    for field in type(model).model_fields:
        if field in skip or field == key:
            continue
        value = getattr(model, field)
        if reference is not None and getattr(reference, field) == value:
            continue
        if reference is None and field == "warmup_epochs" and value == 0:
            continue
        parts.append(f"{field}={_fmt(value)}")
    return f"{name}({', '.join(parts)})" if parts else str(name)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def expand(request: ExperimentCreate) -> list[Cell]:
    """The cartesian product of the grid, in grid order; raises CellError for the first invalid cell."""
    axes = request.grid.axes()
    base = request.base
    base_lr_given = "lr" in base.optimizer.model_fields_set
    cells: list[tuple[RunSpec, dict[str, Any]]] = []
    for index, values in enumerate(itertools.product(*axes.values())):
        choice = dict(zip(axes, values, strict=True))
        spec = base.to_json()
        params: dict[str, Any] = {}
        if "optimizer" in choice:
            opt = choice["optimizer"]
            spec["optimizer"] = opt.model_dump(mode="json")
            params["optimizer"] = _short(opt, "name", skip={"lr"})
            if "lr" not in opt.model_fields_set and "lr" not in choice and base_lr_given:
                spec["optimizer"]["lr"] = base.optimizer.lr  # one lr stated once for every optimizer
        if "lr" in choice:
            spec["optimizer"]["lr"] = choice["lr"]
        if "optimizer" in choice or "lr" in choice:
            params["lr"] = spec["optimizer"]["lr"]
        if "schedule" in choice:
            spec["schedule"] = choice["schedule"].model_dump(mode="json")
            params["schedule"] = _short(choice["schedule"], "kind", skip=set())
        for key in ("seed", "batch_size"):
            if key in choice:
                spec[key] = params[key] = choice[key]
        try:
            for key in (k for k in choice if "." in k):  # dotted paths, after the named axes they may refine
                params[key] = choice[key]
                set_path(spec, key, choice[key])
            cells.append((RunSpec.model_validate(spec), params))
        except (ValidationError, PathError) as exc:
            raise CellError(index, params, exc) from exc
    varying = [k for k in (cells[0][1] if cells else {}) if len({repr(p[k]) for _, p in cells}) > 1]
    shown = varying or list(cells[0][1]) if cells else []
    out = []
    for run_spec, params in cells:
        label = describe({k: params[k] for k in shown})
        config = describe({k: params[k] for k in shown if k != "seed"}) or "all"
        out.append(Cell(spec=run_spec, params=params, label=label, config=config))
    return out


# --- persistence ----------------------------------------------------------------------------------


def create_experiment(
    session: Session, request: ExperimentCreate, cells: list[Cell], *, owner: str
) -> tuple[Experiment, list[Run]]:
    """The experiment row and one queued run per cell, in one transaction (the caller commits, then enqueues)."""
    experiment = Experiment(
        owner=owner,
        execution=experiment_execution(session, request.execution, [c.spec for c in cells]),
        name=request.name,
        base=request.base.to_json(),
        grid=request.model_dump(mode="json")["grid"],
        early_stopping=request.early_stopping.model_dump(mode="json") if request.early_stopping else None,
        created_at=utcnow(),
    )
    session.add(experiment)
    session.flush()
    runs = [
        store.create_run(
            session,
            cell.spec,
            choose_queue(session, cell.spec.device),
            label=cell.label,
            experiment_id=experiment.id,
            params={**cell.params, "config": cell.config},
            owner=owner,
        )
        for cell in cells
    ]
    return experiment, runs


def members(session: Session, experiment_id: str) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.experiment_id == experiment_id).order_by(Run.created_at, Run.id)))


def to_public(session: Session, experiment: Experiment) -> ExperimentPublic:
    runs = members(session, experiment.id)
    counts = Counter(r.status for r in runs)
    finished = all(RunStatus(r.status).is_finished() for r in runs)
    started = any(r.status != RunStatus.queued.value for r in runs)
    return ExperimentPublic(
        id=experiment.id,
        name=experiment.name,
        execution=experiment.execution,
        created_at=experiment.created_at,
        base=RunSpec.model_validate(experiment.base),
        grid={k: v for k, v in experiment.grid.items() if v is not None},
        early_stopping=experiment.early_stopping,
        status="finished" if finished else "running" if started else "queued",
        counts=dict(counts),
        runs=[
            MemberRun(
                id=r.id,
                status=RunStatus(r.status),
                label=r.label or "",
                params={k: v for k, v in (r.params or {}).items() if k != "config"},
            )
            for r in runs
        ],
    )
