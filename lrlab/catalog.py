"""What the service offers, described without torch: datasets (built-in and uploaded), models, optimizers, schedules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

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

MODELS: dict[str, type[BaseModel]] = {"mlp": MlpSpec, "cnn": CnnSpec, "resnet": ResnetSpec}

SKIP = {"name", "kind"}


def parameters(schema: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Each field's JSON-schema facts (default, bounds, description), as /docs shows them."""
    props = schema.model_json_schema()["properties"]
    return {k: {kk: vv for kk, vv in v.items() if kk != "title"} for k, v in props.items() if k not in SKIP}


def catalog(uploads: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`uploads`: the caller's uploaded datasets (DatasetPublic as JSON); a run names one as {"id": ...}."""
    return {
        "datasets": [{"name": name, **meta} for name, meta in DATASETS.items()],
        "uploads": [
            {
                **{k: d[k] for k in ("id", "name", "kind", "input_shape", "n_classes", "n_samples", "class_names")},
                "spec": {"dataset": {"id": d["id"]}},
            }
            for d in uploads or []
        ],
        "models": [{"name": name, "parameters": parameters(s)} for name, s in MODELS.items()],
        "optimizers": [{"name": name, "hyperparameters": parameters(s)} for name, s in OPTIMIZER_SCHEMAS.items()],
        "schedules": [{"kind": kind, "parameters": parameters(s)} for kind, s in SCHEDULE_SCHEMAS.items()],
        "devices": ["auto", "cpu", "cuda"],
    }
