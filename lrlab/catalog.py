"""What the service offers, described without torch: datasets (built-in, uploaded and plugins'), models (ours and
plugins'), the layer types of a `sequential` model, optimizers, schedules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from lrlab.schemas.layers import LAYER_SCHEMAS, SequentialSpec
from lrlab.schemas.plugins import Offer, Offers
from lrlab.schemas.spec import OPTIMIZER_SCHEMAS, SCHEDULE_SCHEMAS, CnnSpec, MlpSpec, ResnetSpec

# Shapes are per sample; trainer/data.py produces exactly these (a test keeps the two in step).
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {
        "description": "scikit-learn's handwritten digits: 1797 8x8 grey images, 10 classes.",
        "input_shape": [1, 8, 8],
        "n_classes": 10,
        "n_samples": 1797,
    },
    "mnist1d": {
        "description": "MNIST-1D, generated locally: 1-D signals of length 40, 10 classes.",
        "input_shape": [1, 40],
        "n_classes": 10,
        "n_samples": 5000,
    },
    "spirals": {
        "description": "Synthetic interleaved 2-D spirals, 3 classes.",
        "input_shape": [2],
        "n_classes": 3,
        "n_samples": 1500,
    },
    "blobs": {
        "description": "Synthetic Gaussian blobs in 8 dimensions, 4 classes.",
        "input_shape": [8],
        "n_classes": 4,
        "n_samples": 1200,
    },
}

MODELS: dict[str, type[BaseModel]] = {
    "mlp": MlpSpec,
    "cnn": CnnSpec,
    "resnet": ResnetSpec,
    "sequential": SequentialSpec,
}

SKIP = {"name", "kind"}


def parameters(schema: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Each field's JSON-schema facts (default, bounds, description), as /docs shows them."""
    props = schema.model_json_schema()["properties"]
    return {k: {kk: vv for kk, vv in v.items() if kk != "title"} for k, v in props.items() if k not in SKIP}


def _model_parameters(schema: type[BaseModel]) -> dict[str, dict[str, Any]]:
    found = parameters(schema)
    if schema is SequentialSpec:  # its items are the layer types, listed under `layers` (not as dangling $refs)
        found["layers"] = {k: v for k, v in found["layers"].items() if k != "items"}
        found["layers"]["items"] = 'a layer: one of the types under `layers`, or its bare type ("relu")'
    return found


def _layer_types() -> list[dict[str, Any]]:
    """Each layer type of a `sequential` model: what it does and its arguments (torch's names and defaults)."""
    out = []
    for kind, schema in LAYER_SCHEMAS.items():
        if kind == "residual":  # recursive: its schema is a reference to itself
            arguments: dict[str, Any] = {
                "layers": {"type": "array", "minItems": 1, "description": "A nested layer list of these types."}
            }
        else:
            arguments = {k: v for k, v in parameters(schema).items() if k != "type"}
        out.append({"type": kind, "description": schema.__doc__, "arguments": arguments})
    return out


def _plugin(offer: Offer) -> dict[str, Any]:
    plugin = offer.plugin
    return {
        "name": plugin.name,
        "plugin": True,
        "distribution": plugin.distribution,
        "version": plugin.version,
        "description": plugin.description,
        "parameters": {
            p.name: {
                "required": p.required,
                **({} if p.required else {"default": p.default}),
                **({"annotation": p.annotation} if p.annotation else {}),
            }
            for p in plugin.parameters
        },
        "open_parameters": plugin.open_parameters,
        "workers": list(offer.workers),
    }


def catalog(uploads: list[dict[str, Any]] | None = None, offers: Offers | None = None) -> dict[str, Any]:
    """`uploads`: the caller's uploaded datasets (DatasetPublic as JSON); a run names one as {"id": ...}. `offers`:
    the plugins live workers advertise, listed beside the built-ins (`"plugin": true`) with the workers offering
    them; `refused_plugins`: entry points some worker refused at start, and why."""
    offers = offers or Offers()
    return {
        "datasets": [{"name": name, "plugin": False, **meta} for name, meta in DATASETS.items()]
        + [_plugin(o) for o in offers.datasets],
        "uploads": [
            {
                **{k: d[k] for k in ("id", "name", "kind", "input_shape", "n_classes", "n_samples", "class_names")},
                "spec": {"dataset": {"id": d["id"]}},
            }
            for d in uploads or []
        ],
        "models": [{"name": name, "plugin": False, "parameters": _model_parameters(s)} for name, s in MODELS.items()]
        + [_plugin(o) for o in offers.models],
        "layers": _layer_types(),
        "refused_plugins": [
            {**r.model_dump(mode="json", exclude={"refused"}), "reason": r.refused, "workers": list(workers)}
            for r, workers in offers.refused
        ],
        "optimizers": [{"name": name, "hyperparameters": parameters(s)} for name, s in OPTIMIZER_SCHEMAS.items()],
        "schedules": [{"kind": kind, "parameters": parameters(s)} for kind, s in SCHEDULE_SCHEMAS.items()],
        "devices": ["auto", "cpu", "cuda"],
    }
