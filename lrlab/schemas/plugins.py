"""Models and datasets from plugin packages as the API sees them, without importing any: a spec's reference to one,
what workers advertise (trainer/plugins.py's Plugins.describe), and a spec checked against what is on offer."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, JsonValue

from lrlab.schemas.strict import Strict

PLUGIN_NAME = r"^[a-z][a-z0-9_-]{0,63}$"  # trainer.plugins.NAME: what an entry point must be called to be loaded
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"  # a Python identifier: a factory's keyword argument
MAX_PARAMS = 64  # trainer.plugins.MAX_PARAMETERS
ParamName = Annotated[str, Field(pattern=PARAM_NAME)]


def _finite(value: Any, where: str = "") -> None:
    """JSON as Python parses it may hold NaN and infinity (Postgres' JSON may not): refuse them anywhere inside."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {value}" + (f" (at {where})" if where else ""))
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


def finite(value: Any) -> Any:
    _finite(value)
    return value


Params = Annotated[
    dict[ParamName, Annotated[JsonValue, AfterValidator(finite)]],
    Field(max_length=MAX_PARAMS, description="The factory's keyword arguments (GET /v1/catalog lists them)."),
]


class PluginModelSpec(Strict):
    """A model from a plugin package installed on the workers: factory(input_shape, n_classes, **params)."""

    name: str = Field(pattern=PLUGIN_NAME, description="The plugin model's name, as GET /v1/catalog lists it.")
    params: Params = Field(default_factory=dict)


# --- what workers advertise -------------------------------------------------------------------------


class PluginParameter(BaseModel):
    name: str
    required: bool
    default: JsonValue = None
    annotation: str | None = None


class AdvertisedPlugin(BaseModel):
    """A model or dataset a worker offers."""

    name: str = Field(pattern=PLUGIN_NAME)
    entry_point: str
    distribution: str | None = None
    version: str | None = None
    description: str | None = None
    parameters: list[PluginParameter] = Field(default_factory=list, max_length=MAX_PARAMS)
    open_parameters: bool = False


class RefusedPlugin(BaseModel):
    """An entry point a worker refused at start, and why."""

    kind: Literal["model", "dataset"]
    name: str
    entry_point: str
    distribution: str | None = None
    version: str | None = None
    refused: str


class Advertisement(BaseModel):
    """What one worker's heartbeat says it offers beyond the built-ins."""

    models: list[AdvertisedPlugin] = Field(default_factory=list)
    datasets: list[AdvertisedPlugin] = Field(default_factory=list)
    refused: list[RefusedPlugin] = Field(default_factory=list)


@dataclass(frozen=True)
class Offer:
    """One plugin as offered by one or more live workers (the same name, distribution and version)."""

    kind: Literal["model", "dataset"]
    plugin: AdvertisedPlugin
    workers: tuple[str, ...]


@dataclass(frozen=True)
class Offers:
    """Every plugin on offer from the live workers, and those some worker refused."""

    models: tuple[Offer, ...] = ()
    datasets: tuple[Offer, ...] = ()
    refused: tuple[tuple[RefusedPlugin, tuple[str, ...]], ...] = ()

    @classmethod
    def gather(cls, heartbeats: Iterable[tuple[str, Mapping[str, Any] | None]]) -> Offers:
        """From (worker hostname, its advertisement JSON or None) pairs; an advertisement that does not parse
        offers nothing (a worker of another version may send more than this one reads)."""
        found: dict[tuple[str, str, str | None, str | None], list[str]] = {}
        plugins: dict[tuple[str, str, str | None, str | None], AdvertisedPlugin] = {}
        refused: dict[tuple[str, str, str | None, str | None, str], list[str]] = {}
        refused_plugins: dict[tuple[str, str, str | None, str | None, str], RefusedPlugin] = {}
        for hostname, raw in heartbeats:
            if not raw:
                continue
            try:
                ad = Advertisement.model_validate(raw)
            except ValueError:
                continue
            for kind, listed in (("model", ad.models), ("dataset", ad.datasets)):
                for plugin in listed:
                    key = (kind, plugin.name, plugin.distribution, plugin.version)
                    plugins.setdefault(key, plugin)
                    found.setdefault(key, []).append(hostname)
            for r in ad.refused:
                rkey = (r.kind, r.name, r.distribution, r.version, r.refused)
                refused_plugins.setdefault(rkey, r)
                refused.setdefault(rkey, []).append(hostname)
        offers = {
            key: Offer(key[0], plugins[key], tuple(sorted(set(workers))))  # type: ignore[arg-type]
            for key, workers in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2:])))
        }
        return cls(
            models=tuple(o for o in offers.values() if o.kind == "model"),
            datasets=tuple(o for o in offers.values() if o.kind == "dataset"),
            refused=tuple((refused_plugins[k], tuple(sorted(set(w)))) for k, w in sorted(refused.items(), key=str)),
        )

    def named(self, kind: Literal["model", "dataset"], name: str) -> list[Offer]:
        return [o for o in (self.models if kind == "model" else self.datasets) if o.plugin.name == name]

    def names(self, kind: Literal["model", "dataset"]) -> list[str]:
        return sorted({o.plugin.name for o in (self.models if kind == "model" else self.datasets)})


@dataclass(frozen=True)
class Problem:
    """Where a spec goes wrong (relative to the model or dataset object: ("name",), ("params", "width")) and why."""

    loc: tuple[str | int, ...]
    msg: str


def check_plugin(
    offers: Offers, kind: Literal["model", "dataset"], name: str, params: Mapping[str, Any], builtins: Iterable[str]
) -> Problem | None:
    """None when some live worker offers `name` and its factory takes `params`; the first problem otherwise."""
    candidates = offers.named(kind, name)
    if not candidates:
        on_offer = [*builtins, *offers.names(kind)]
        return Problem(("name",), f"no live worker offers the {kind} {name!r}; on offer: {', '.join(on_offer)}")
    problems = [_check_params(kind, o.plugin, params) for o in candidates]
    return None if any(p is None for p in problems) else problems[0]  # some version on offer takes them


def _check_params(kind: str, plugin: AdvertisedPlugin, params: Mapping[str, Any]) -> Problem | None:
    takes = {p.name: p for p in plugin.parameters}
    for name in params:
        if name not in takes and not plugin.open_parameters:
            offered = ", ".join(takes) or "none"
            return Problem(
                ("params", name), f"the {kind} {plugin.name!r} takes no parameter {name!r} (it takes: {offered})"
            )
    for p in plugin.parameters:
        if p.required and p.name not in params:
            return Problem(("params", p.name), f"the {kind} {plugin.name!r} needs parameter {p.name!r}")
        if p.name in params and p.annotation is not None and not _fits(p.annotation, params[p.name]):
            value = params[p.name]
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return Problem(
                ("params", p.name),
                f"the {kind} {plugin.name!r} takes {p.name}: {p.annotation}, not {shown} ({_json_type(value)})",
            )
    return None


# A factory's annotation as JSON can meet it: an annotation made of these alone (int, float | None, list[int],
# Optional[str], ...) is checked before anything is queued; any other (torch.dtype, Literal[...], a class of the
# plugin's) is left to the factory, on the worker.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),  # an int is a float (PEP 484)
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
    "NoneType": lambda v: v is None,
    "list": lambda v: isinstance(v, list),
    "tuple": lambda v: isinstance(v, list),
    "Sequence": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
    "Mapping": lambda v: isinstance(v, dict),
}


def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _alternatives(annotation: str) -> list[str] | None:
    """The kinds of _KINDS an annotation admits, or None when it names anything else."""
    text = annotation.replace("typing.", "").replace("collections.abc.", "").strip()
    if text.startswith("Optional[") and text.endswith("]"):
        inner = _alternatives(text[len("Optional[") : -1])
        return None if inner is None else [*inner, "None"]
    if text.startswith("Union[") and text.endswith("]"):
        parts = _split_top(text[len("Union[") : -1], ",")
    else:
        parts = _split_top(text, "|")
    kinds = []
    for part in parts:
        base = part.strip().split("[", 1)[0].strip()
        if base not in _KINDS:
            return None
        kinds.append(base)
    return kinds


def _fits(annotation: str, value: Any) -> bool:
    kinds = _alternatives(annotation)
    return kinds is None or any(_KINDS[k](value) for k in kinds)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return "an array" if isinstance(value, list) else "an object"
