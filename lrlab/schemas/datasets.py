"""Uploaded datasets as the API returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class DatasetPublic(BaseModel):
    id: str = Field(description='Name it in a run spec as {"dataset": {"id": ...}}.')
    name: str
    kind: Literal["npz", "csv", "images"]
    n_samples: int
    n_classes: int
    input_shape: list[int] = Field(
        description="Per sample, as the models see it; images: [3, image_size, image_size] at the default size 32."
    )
    sha256: str = Field(description="Of the uploaded bytes: the same file uploaded again is the same dataset.")
    size_bytes: int
    class_names: list[str] | None = Field(
        None, description="Class folder names (images) or label values (CSV), in label order; null for .npz."
    )
    label_column: str | None = Field(None, description="CSV only: the column holding the labels.")
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = None
