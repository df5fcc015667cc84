"""The optimizer declarations against torch.optim, and the service's torch-free copies held to them."""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError

import trainer
from lrlab.schemas.pbt import MUTABLE
from lrlab.schemas.spec import OPTIMIZER_SCHEMAS
from trainer.optimizers import OPTIMIZERS, Bounds, Declaration, Hyperparameter

TORCH_CLASSES = {
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}
# torch's switches of implementation (and maximize, which we do not offer): not hyperparameters of the math
SWITCHES = {"capturable", "decoupled_weight_decay", "differentiable", "foreach", "fused", "maximize"}
NAMES = sorted(OPTIMIZERS)


def test_declarations_import_without_torch() -> None:
    root = Path(trainer.__file__).resolve().parents[1]
    code = (
        "import sys; from trainer.optimizers import OPTIMIZERS;"
        " [d.resolve(d.defaults['lr'], {}) for d in OPTIMIZERS.values()]; assert 'torch' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_declarations_cover_torch_classes() -> None:
    assert sorted(TORCH_CLASSES) == NAMES == sorted(OPTIMIZER_SCHEMAS) == sorted(MUTABLE)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_are_torchs_in_its_order_with_its_defaults(name: str) -> None:
    parameters = inspect.signature(TORCH_CLASSES[name].__init__).parameters
    torch_names = [n for n in parameters if n not in {"self", "params", *SWITCHES}]
    declaration = OPTIMIZERS[name]
    assert [h.name for h in declaration.hyperparameters] == torch_names
    for h in declaration.hyperparameters:
        assert parameters[h.name].default == h.default, h.name
        assert isinstance(parameters[h.name].default, bool) == h.is_flag, h.name


STATE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "momentum": 0.5}),
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adamw", {"amsgrad": True}),
    ("adagrad", {"initial_accumulator_value": 0.5}),
    ("adadelta", {}),
]


@pytest.mark.parametrize(("name", "given"), STATE_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(STATE_CASES)])
def test_state_names_are_the_ones_torch_keeps(name: str, given: dict[str, Any]) -> None:
    p = torch.nn.Parameter(torch.randn(3))
    reference = TORCH_CLASSES[name]([p], **given)
    p.grad = torch.randn(3)
    reference.step()
    declaration = OPTIMIZERS[name]
    kept = declaration.state_names(declaration.resolve(declaration.defaults["lr"], given))
    assert set(kept) == set(reference.state[p]) - {"step"}
    for state in declaration.state:  # the state's starting value: zeros, or the declared hyperparameter's value
        if state.fill is not None:
            assert state.fill in declaration.defaults


# --- the API's run spec (lrlab/schemas/spec.py) ------------------------------------------------------


def _schema_bounds(prop: dict[str, Any]) -> Bounds:
    """The JSON schema's bounds of a number, as the catalog and /docs show them."""
    low_open, high_open = "exclusiveMinimum" in prop, "exclusiveMaximum" in prop
    low = prop.get("exclusiveMinimum", prop.get("minimum", -math.inf))
    high = prop.get("exclusiveMaximum", prop.get("maximum", math.inf))
    return Bounds(float(low), float(high), low_open, high_open)


@pytest.mark.parametrize("name", NAMES)
def test_api_schema_declares_the_same_hyperparameters_defaults_and_bounds(name: str) -> None:
    declaration = OPTIMIZERS[name]
    props = OPTIMIZER_SCHEMAS[name].model_json_schema()["properties"]
    assert set(props) - {"name"} == {h.name for h in declaration.hyperparameters}
    for h in declaration.hyperparameters:
        prop = props[h.name]
        if h.is_flag:
            assert (prop["type"], prop["default"]) == ("boolean", h.default), h.name
        elif h.is_pair:
            assert (prop["type"], prop["minItems"], prop["maxItems"]) == ("array", 2, 2), h.name
            assert tuple(prop["default"]) == h.default, h.name
            assert [_schema_bounds(item) for item in prop["prefixItems"]] == [h.allowed] * 2, h.name
        else:
            assert (prop["type"], prop["default"]) == ("number", h.default), h.name
            assert _schema_bounds(prop) == h.allowed, h.name


def _probes(h: Hyperparameter) -> list[Any]:
    """Values on and just past each end of the declared allowed range, and inside it."""
    if h.is_flag:
        return [True, False]
    b = h.allowed
    values = [b.low, math.nextafter(b.low, -math.inf), (b.low + min(b.high, 2.0)) / 2]
    if math.isfinite(b.high):
        values += [b.high, math.nextafter(b.high, math.inf)]
    return [(v, 0.99) for v in values] if h.is_pair else values


def _allowed(declaration: Declaration, spec: dict[str, Any]) -> bool:
    """What the declaration lets a run spec ask for: every value within `allowed`, and the optimizer's rule."""
    values = {**declaration.defaults, **spec}
    for h in declaration.hyperparameters:
        if h.is_pair and not all(h.allowed.holds(x) for x in values[h.name]):
            return False
        if not h.is_flag and not h.is_pair and not h.allowed.holds(values[h.name]):
            return False
    return declaration.rule is None or declaration.rule(values) is None


def _validates(schema: type[BaseModel], spec: dict[str, Any]) -> bool:
    try:
        schema.model_validate(spec)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_api_accepts_exactly_what_the_declaration_allows_and_the_trainer_takes_it(name: str) -> None:
    declaration = OPTIMIZERS[name]
    specs: list[dict[str, Any]] = [{}]
    for h in declaration.hyperparameters:
        specs += [{h.name: v} for v in _probes(h)]
    if name == "sgd":  # the rule across hyperparameters: nesterov needs a momentum and no dampening
        specs += [{"nesterov": True, "momentum": m, "dampening": d} for m in (0.0, 0.5) for d in (0.0, 0.1)]
    checked = 0
    for spec in specs:
        accepted = _validates(OPTIMIZER_SCHEMAS[name], {"name": name, **spec})
        assert accepted == _allowed(declaration, spec), spec
        if accepted:  # whatever the API lets through, the trainer builds
            lr = spec.get("lr", declaration.defaults["lr"])
            declaration.resolve(lr, {k: v for k, v in spec.items() if k != "lr"})
            checked += 1
    assert 0 < checked < len(specs)


@pytest.mark.parametrize("name", NAMES)
def test_population_searches_the_numbers_every_step_reads(name: str) -> None:
    """lrlab/schemas/pbt.py's MUTABLE: the numbers a step reads, but a pair (betas) and flags."""
    declaration = OPTIMIZERS[name]
    searchable = {h.name for h in declaration.hyperparameters if h.stepped and not h.is_flag and not h.is_pair}
    assert set(MUTABLE[name]) == searchable
