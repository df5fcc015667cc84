"""Uploaded datasets on a worker: unpacked once per content hash into a cache under the dataset root.

A run spec naming `{"dataset": {"id": ...}}` becomes one naming the cached file or folder by `path`, so the
trainer's own loaders (and its per-process cache of loaded tensors) do the rest: an .npz as uploaded, a CSV
converted to an .npz, an image archive extracted to class folders. Each is built in a temporary name and
renamed into place, so concurrent workers sharing the data volume never see half of one.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from lrlab.db import session_scope
from lrlab.models import Dataset
from lrlab.settings import Settings, get_settings
from lrlab.uploads.blobs import get_blob_store
from lrlab.uploads.validation import DEFAULT_IMAGE_SIZE, Limits, cache_name, extract_images, read_csv
from worker.retry import through_outages

log = logging.getLogger(__name__)


def materialize(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with an uploaded dataset replaced by its cached path under the dataset root; others unchanged."""
    ref = spec.get("dataset")
    if not isinstance(ref, dict) or ref.get("id") is None:
        return spec
    found = _lookup(str(ref["id"]))
    if found is None:
        raise ValueError(f"Dataset {ref['id']} no longer exists (it was deleted)")
    path = ensure_cached(*found, settings=get_settings())
    return {**spec, "dataset": {"path": path, "image_size": ref.get("image_size", DEFAULT_IMAGE_SIZE)}}


def _lookup(dataset_id: str) -> tuple[str, str, str] | None:
    """(kind, sha256, label_column), through a database outage (it is not the run's fault)."""

    def read() -> tuple[str, str, str] | None:
        with session_scope() as session:
            row = session.get(Dataset, dataset_id)
            return None if row is None else (row.kind, row.sha256, row.label_column)

    return through_outages(f"looking up dataset {dataset_id}")(read)


def ensure_cached(kind: str, sha256: str, label_column: str, *, settings: Settings) -> str:
    """Build the trainer-ready form of a blob unless it is there already; its path relative to the dataset root."""
    assert settings.dataset_root is not None
    cache = settings.upload_cache_dir
    target = cache / cache_name(kind, sha256, label_column)
    relative = str(target.relative_to(settings.dataset_root))
    if target.exists():
        return relative
    cache.mkdir(parents=True, exist_ok=True)
    building = cache / f".building-{uuid.uuid4().hex}"
    try:
        with get_blob_store(settings).local_path(sha256) as source:
            _build(kind, source, building, label_column, Limits.from_settings(settings))
        try:
            os.rename(building, target)
        except OSError:
            if not target.exists():  # a folder another worker finished first is fine; anything else is not
                raise
        log.info("dataset %s (%s) unpacked to %s", sha256[:12], kind, target)
    finally:
        if building.is_dir():
            shutil.rmtree(building, ignore_errors=True)
        else:
            building.unlink(missing_ok=True)
    return relative


def _build(kind: str, source: Path, dest: Path, label_column: str, limits: Limits) -> None:
    if kind == "npz":
        try:
            os.link(source, dest)  # same filesystem: no copy
        except OSError:
            shutil.copyfile(source, dest)
    elif kind == "csv":
        table = read_csv(source, label_column)
        assert table.x is not None and table.y is not None
        with dest.open("wb") as f:
            np.savez(f, x=table.x, y=table.y)
    elif kind == "images":
        extract_images(source, dest, limits)
    else:
        raise ValueError(f"Unknown dataset kind: {kind!r}")
