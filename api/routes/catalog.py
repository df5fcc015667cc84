"""The catalog: datasets, models, optimizers with their hyperparameters and defaults, schedules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from lrlab.catalog import catalog

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/catalog")
def get_catalog() -> dict[str, Any]:
    return catalog()
