"""Models and datasets from installed packages: the entry-point groups `lrlab.models` and `lrlab.datasets`.

A package registers, in its pyproject.toml,

    [project.entry-points."lrlab.models"]
    tiny-transformer = "my_package.models:tiny_transformer"   # factory(input_shape, n_classes, **params) -> nn.Module

    [project.entry-points."lrlab.datasets"]
    parity = "my_package.data:parity"   # factory(**params) -> (x, y) or ((x_train, y_train), (x_val, y_val))

and the entry point's name is the name a run spec uses. discover() loads every entry point once (a worker
does it at start): it reads each factory's parameters and their defaults from its signature and the
distribution and version that provide it, and refuses, with a logged warning, an entry point that shadows a
built-in name, has a name a spec cannot carry, cannot be imported, or whose signature does not fit. What it
finds is advertised as JSON (Plugins.describe), so the API can validate specs without importing anything.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.metadata
import inspect
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

MODEL_GROUP = "lrlab.models"
DATASET_GROUP = "lrlab.datasets"
# Names a spec can carry and a URL or a dotted grid path can hold as they are.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
MAX_PARAMETERS = 64  # a factory's own parameters, as advertised in each heartbeat
MAX_DEFAULT_CHARS = 1000  # a default longer than this as JSON is advertised by its repr, cut short
# Models and datasets of lrlab's own (trainer.models.MODELS, trainer.data.DATASETS: a test keeps them in step;
# those modules call this one): no plugin may take their names.
BUILTIN_MODELS = frozenset({"mlp", "cnn", "resnet", "sequential"})
BUILTIN_DATASETS = frozenset({"digits", "mnist1d", "spirals", "blobs"})
# A factory (and the model's first forward) that has not returned after this long fails its run, rather than
# hold its worker, renewing the lease, for ever. On the main thread only, where a worker's task runs.
FACTORY_SECONDS = 300.0

Kind = Literal["model", "dataset"]
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Parameter:
    """One of a factory's own parameters: its default (JSON) when it has one."""

    name: str
    required: bool
    default: Any = None
    annotation: str | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "required": self.required}
        if not self.required:
            out["default"] = self.default
        if self.annotation is not None:
            out["annotation"] = self.annotation
        return out


@dataclass(frozen=True)
class Plugin:
    """An entry point as discover() found it: usable (factory set) or refused (refused says why)."""

    kind: Kind
    name: str
    entry_point: str  # "module:attribute"
    distribution: str | None
    version: str | None
    parameters: tuple[Parameter, ...] = ()
    open_parameters: bool = False  # the factory takes **kwargs: any parameter name is passed on
    description: str | None = None
    factory: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    refused: str | None = None

    def describe(self) -> dict[str, Any]:
        """What a worker advertises (JSON)."""
        out: dict[str, Any] = {
            "name": self.name,
            "entry_point": self.entry_point,
            "distribution": self.distribution,
            "version": self.version,
        }
        if self.refused is not None:
            return {"kind": self.kind, **out, "refused": self.refused}
        return {
            **out,
            "description": self.description,
            "parameters": [p.describe() for p in self.parameters],
            "open_parameters": self.open_parameters,
        }

    def check_params(self, params: Mapping[str, Any]) -> None:
        """ValueError for a parameter the factory does not take, or a required one left out."""
        known = {p.name for p in self.parameters}
        unknown = sorted(set(params) - known)
        if unknown and not self.open_parameters:
            raise ValueError(f"Unknown parameter for {self.kind} {self.name!r}: {unknown} (it takes {sorted(known)})")
        missing = [p.name for p in self.parameters if p.required and p.name not in params]
        if missing:
            raise ValueError(f"The {self.kind} {self.name!r} needs parameter(s) {missing}")

    @property
    def label(self) -> str:
        """'tiny-transformer (lrlab-example-plugin 0.1.0)', for messages."""
        provider = " ".join(part for part in (self.distribution, self.version) if part)
        return f"{self.name!r} ({provider or 'no distribution'})"


@dataclass(frozen=True)
class Plugins:
    models: dict[str, Plugin]
    datasets: dict[str, Plugin]
    refused: tuple[Plugin, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The advertisement a worker sends with its heartbeat (JSON)."""
        return {
            "models": [p.describe() for p in self.models.values()],
            "datasets": [p.describe() for p in self.datasets.values()],
            "refused": [p.describe() for p in self.refused],
        }

    def model(self, name: str) -> Plugin:
        if name not in self.models:
            raise ValueError(f"Unknown model: {name!r} (plugins installed here: {sorted(self.models) or 'none'})")
        return self.models[name]

    def dataset(self, name: str) -> Plugin:
        if name not in self.datasets:
            raise ValueError(f"Unknown dataset: {name!r} (plugins installed here: {sorted(self.datasets) or 'none'})")
        return self.datasets[name]


# --- discovery --------------------------------------------------------------------------------------


def discover(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
    reserved_models: Iterable[str] = BUILTIN_MODELS,
    reserved_datasets: Iterable[str] = BUILTIN_DATASETS,
) -> Plugins:
    """Load every entry point of the two groups (those installed, unless `entry_points` is given)."""
    if entry_points is None:
        entry_points = [
            *importlib.metadata.entry_points(group=MODEL_GROUP),
            *importlib.metadata.entry_points(group=DATASET_GROUP),
        ]
    reserved = {"model": frozenset(reserved_models), "dataset": frozenset(reserved_datasets)}
    found: dict[tuple[Kind, str], list[Plugin]] = {}
    for ep in entry_points:
        if ep.group not in (MODEL_GROUP, DATASET_GROUP):
            continue
        kind: Kind = "model" if ep.group == MODEL_GROUP else "dataset"
        plugin = _load(kind, ep, reserved[kind])
        found.setdefault((kind, ep.name), []).append(plugin)

    usable: dict[Kind, dict[str, Plugin]] = {"model": {}, "dataset": {}}
    refused: list[Plugin] = []
    for (kind, name), plugins in sorted(found.items()):
        if len(plugins) > 1:
            offers = ", ".join(f"{p.distribution} {p.version}" for p in plugins)
            plugins = [
                _refuse(p, f"the name {name!r} is offered by more than one distribution: {offers}") for p in plugins
            ]
        for plugin in plugins:
            if plugin.refused is not None:
                refused.append(plugin)
            else:
                usable[kind][name] = plugin
    for plugin in refused:
        logger.warning(
            "refused %s plugin %s from entry point %s: %s",
            plugin.kind,
            plugin.label,
            plugin.entry_point,
            plugin.refused,
        )
    for plugin in [*usable["model"].values(), *usable["dataset"].values()]:
        logger.info("%s plugin %s from %s", plugin.kind, plugin.label, plugin.entry_point)
    return Plugins(usable["model"], usable["dataset"], tuple(refused))


@functools.cache
def installed() -> Plugins:
    """The plugins installed in this environment, loaded once per process."""
    return discover()


def _refuse(plugin: Plugin, reason: str) -> Plugin:
    return Plugin(plugin.kind, plugin.name, plugin.entry_point, plugin.distribution, plugin.version, refused=reason)


def _load(kind: Kind, ep: importlib.metadata.EntryPoint, reserved: frozenset[str]) -> Plugin:
    dist = getattr(ep, "dist", None)
    base = Plugin(kind, ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)
    if ep.name in reserved:
        return _refuse(base, f"it shadows the built-in {kind} {ep.name!r}")
    if not NAME.fullmatch(ep.name):
        return _refuse(base, f"the name {ep.name!r} must match {NAME.pattern} (lower case, digits, '_' and '-')")
    try:
        factory = ep.load()
    except Exception as e:  # anything the plugin's import raises: the worker starts without it
        return _refuse(base, f"cannot import {ep.value}: {type(e).__name__}: {e}")
    if not callable(factory):
        return _refuse(base, f"{ep.value} is a {type(factory).__name__}, not a callable factory")
    try:
        parameters, open_parameters = _parameters(factory, 2 if kind == "model" else 0)
    except ValueError as e:
        return _refuse(base, str(e))
    doc = inspect.getdoc(factory)
    description = doc.strip().split("\n\n")[0].replace("\n", " ")[:300] if doc else None
    return Plugin(
        kind, ep.name, ep.value, base.distribution, base.version, parameters, open_parameters, description, factory
    )


def _parameters(factory: Callable[..., Any], leading: int) -> tuple[tuple[Parameter, ...], bool]:
    """The factory's own parameters (after the `leading` positional ones a model factory takes: input_shape,
    n_classes), and whether it takes **kwargs. ValueError when its signature cannot take the call."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cannot read the factory's signature: {e}") from e
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in _POSITIONAL][:leading]
    takes_args = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params)
    if len(positional) < leading and not takes_args:
        raise ValueError(f"a model factory takes (input_shape, n_classes, **params); this one takes {signature}")
    own: list[Parameter] = []
    for p in params:
        if p in positional or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.kind == inspect.Parameter.POSITIONAL_ONLY:
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"parameter {p.name!r} is positional-only without a default: no spec can pass it")
            continue  # left at its default: a spec passes parameters by name
        own.append(_parameter(p))
    if len(own) > MAX_PARAMETERS:
        raise ValueError(f"the factory takes {len(own)} parameters; at most {MAX_PARAMETERS}")
    return tuple(own), any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def _parameter(p: inspect.Parameter) -> Parameter:
    annotation = None
    if p.annotation is not inspect.Parameter.empty:
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", None)
        annotation = (annotation or str(p.annotation))[:100]
    if p.default is inspect.Parameter.empty:
        return Parameter(p.name, True, annotation=annotation)
    return Parameter(p.name, False, _as_json(p.default), annotation)


def _as_json(value: Any) -> Any:
    """A default as JSON (tuples as lists); one JSON cannot carry, or a long one, as its repr cut short."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)[:100]
    return json.loads(text) if len(text) <= MAX_DEFAULT_CHARS else repr(value)[:100]


# --- calling the factories ----------------------------------------------------------------------------


def build_plugin_model(
    plugin: Plugin, params: Mapping[str, Any], input_shape: Sequence[int], n_classes: int
) -> nn.Module:
    """factory(input_shape, n_classes, **params), checked: ValueError (the run fails with its message) when the
    factory raises, returns something that is not a Module, or a model whose output is not (B, n_classes)."""
    assert plugin.factory is not None, plugin
    plugin.check_params(params)
    shape = tuple(int(s) for s in input_shape)
    with time_limit(FACTORY_SECONDS):
        try:
            model = plugin.factory(shape, n_classes, **params)
        except Exception as e:
            raise ValueError(f"The model factory of {plugin.label} raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"The model factory of {plugin.label} returned a {type(model).__name__}, not a torch.nn.Module"
            )
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"The model {plugin.label} has no parameters to train")
        _check_output(plugin, model, shape, n_classes)
    return model


class TimeLimitExceeded(Exception):
    """A factory (or a first forward) ran past FACTORY_SECONDS."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeLimitExceeded in the block once `seconds` have passed (SIGALRM: Python code and sleeps are
    interrupted, a call blocked inside C code at its return). Off the main thread, where no signal handler can
    run, the block runs unlimited."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"did not return within {seconds:g} s")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expired)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # an enclosing timer keeps what it had left
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))


def _check_output(plugin: Plugin, model: nn.Module, input_shape: tuple[int, ...], n_classes: int) -> None:
    """One forward of a batch of 2 in eval mode; the model's weights, buffers, mode and the random state are left
    as they were (so the seed still fixes what the run draws next)."""
    state = copy.deepcopy(model.state_dict())
    training = model.training
    x = torch.zeros(2, *input_shape, dtype=next(model.parameters()).dtype)  # (2, *input_shape)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            out = model(x)
    except Exception as e:
        raise ValueError(
            f"The model {plugin.label} fails on a batch of shape {tuple(x.shape)}: {type(e).__name__}: {e}"
        ) from e
    finally:
        model.train(training)
        model.load_state_dict(state)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"The model {plugin.label} returns a {type(out).__name__}, not a tensor of logits")
    if tuple(out.shape) != (2, n_classes):
        raise ValueError(
            f"The model {plugin.label} returns shape {tuple(out.shape)} for a batch of shape {tuple(x.shape)};"
            f" a classifier over {n_classes} classes must return (2, {n_classes})"
        )


Arrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PluginData:
    """A dataset factory's arrays: x (N, *input_shape) numeric and finite, y (N,) integer labels. val is None
    when the factory returned (x, y) and the split is the trainer's (seeded, as for an uploaded .npz)."""

    train: Arrays
    val: Arrays | None


def load_plugin_dataset(plugin: Plugin, params: Mapping[str, Any]) -> PluginData:
    """factory(**params), checked: ValueError (the run fails with its message) for anything but arrays of the
    agreed shapes."""
    assert plugin.factory is not None, plugin
    plugin.check_params(params)
    try:
        with time_limit(FACTORY_SECONDS):
            made = plugin.factory(**params)
    except Exception as e:
        raise ValueError(f"The dataset factory of {plugin.label} raised {type(e).__name__}: {e}") from e
    shape_help = "(x, y) or ((x_train, y_train), (x_val, y_val))"
    if not isinstance(made, tuple | list) or len(made) != 2:
        raise ValueError(
            f"The dataset factory of {plugin.label} returned a {type(made).__name__}; it must return {shape_help}"
        )
    if all(isinstance(part, tuple | list) for part in made):
        train = _arrays(plugin, "train", made[0], shape_help)
        val = _arrays(plugin, "val", made[1], shape_help)
        if train[0].shape[1:] != val[0].shape[1:]:
            raise ValueError(
                f"The dataset {plugin.label}: x_train samples have shape {train[0].shape[1:]}, x_val samples"
                f" {val[0].shape[1:]}"
            )
        return PluginData(train, val)
    return PluginData(_arrays(plugin, "", made, shape_help), None)


def _arrays(plugin: Plugin, part: str, pair: Any, shape_help: str) -> Arrays:
    suffix = f"_{part}" if part else ""
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ValueError(f"The dataset {plugin.label}: expected {shape_help}")
    try:
        x, y = (np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a) for a in pair)
    except (TypeError, ValueError) as e:
        raise ValueError(f"The dataset {plugin.label}: x{suffix}, y{suffix} are not arrays: {e}") from e
    if x.ndim == 0 or x.dtype.kind not in "biuf":
        raise ValueError(f"The dataset {plugin.label}: x{suffix} must be numeric (N, ...), got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"The dataset {plugin.label}: y{suffix} must have shape (N,), got {y.shape}")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ValueError(f"The dataset {plugin.label}: y{suffix} must hold integer labels, got {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"The dataset {plugin.label}: x{suffix} has {len(x)} samples, y{suffix} {len(y)}")
    if len(x) < 2:
        raise ValueError(f"The dataset {plugin.label}: x{suffix} needs at least 2 samples, got {len(x)}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise ValueError(f"The dataset {plugin.label}: x{suffix} holds NaN or infinity")
    return (x[:, None] if x.ndim == 1 else x), y.astype(np.int64)


def main() -> None:
    """`python -m trainer.plugins`: the installed plugins' advertisement as JSON on stdout (a prefork worker's
    parent, which never imports torch, runs this to learn what its children will offer)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.stdout.write(json.dumps(installed().describe()) + "\n")


if __name__ == "__main__":
    main()
