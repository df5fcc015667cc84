"""The catalog: datasets (built-in and the caller's uploads), models, optimizers with their defaults, schedules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep
from lrlab.catalog import catalog
from lrlab.models import Dataset
from lrlab.uploads import records

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/catalog")
def get_catalog(session: SessionDep, owner: OwnerDep) -> dict[str, Any]:
    """Built-in datasets, the caller's uploaded ones (`uploads`), models with their sizes, optimizers, schedules."""
    mine = session.scalars(select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc()))
    return catalog([records.to_public(d).model_dump(mode="json") for d in mine])
