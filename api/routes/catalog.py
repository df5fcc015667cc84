"""The catalog: datasets (built-in, the caller's uploads, plugins'), models (ours and plugins'), the layer types of a
`sequential` model, optimizers with their defaults, schedules."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep, SettingsDep
from lrlab.catalog import catalog
from lrlab.models import Dataset
from lrlab.runs.offers import live_offers
from lrlab.uploads import records

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/catalog")
def get_catalog(session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> dict[str, Any]:
    """Built-in datasets, the caller's uploaded ones (`uploads`), models with their sizes, the layer types of a
    `sequential` model (`layers`), optimizers, schedules; and the models and datasets plugins installed on live
    workers offer (`"plugin": true`, with the workers offering them), and the plugins a worker refused."""
    mine = session.scalars(select(Dataset).where(Dataset.owner == owner).order_by(Dataset.created_at.desc()))
    return catalog([records.to_public(d).model_dump(mode="json") for d in mine], live_offers(session, settings))
