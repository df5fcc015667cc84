"""Uploaded datasets on a worker: fetched from the object store once per content hash into a bounded cache.

A run spec naming `{"dataset": {"id": ...}}` becomes one naming the cached file or folder by `path`, so the
trainer's own loaders (and its per-process cache of loaded tensors) do the rest: an .npz as uploaded, a CSV
converted to an .npz, an image archive extracted to class folders. The cache (lrlab.storage.cache, under the
dataset root, at most LRLAB_CACHE_MAX_BYTES) builds each entry once however many worker processes ask, and
evicts the least recently used ones, never one in use: a task holds the entries its runs train on until it
ends (`held`, around each task in worker/tasks.py). A worker with an empty disk fetches what it needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lrlab.db import session_scope
from lrlab.models import Dataset
from lrlab.settings import Settings, get_settings
from lrlab.storage.cache import Cache
from lrlab.uploads.blobs import BlobStore, get_blob_store
from lrlab.uploads.validation import DEFAULT_IMAGE_SIZE, Limits, cache_name, extract_images, read_csv
from worker.retry import through_outages

log = logging.getLogger(__name__)

_task = threading.local()  # .held: the cache entries the task running on this thread holds (pools may use threads)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Keep every cache entry `materialize` hands out in this block from eviction until the block ends."""
    outer, _task.held = getattr(_task, "held", None), []
    try:
        yield
    finally:
        entries, _task.held = _task.held, outer
        for entry in entries:  # in the order they were taken: the least recently used is the first to go
            entry.__exit__(None, None, None)


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


def cache(settings: Settings) -> Cache:
    return Cache(settings.upload_cache_dir, settings.cache_max_bytes)


def ensure_cached(kind: str, sha256: str, label_column: str, *, settings: Settings) -> str:
    """The trainer-ready form of a blob in the cache, built unless it is there; its path relative to the dataset
    root. Held from eviction until the enclosing `held()` block ends (or, outside one, not at all)."""
    assert settings.dataset_root is not None
    blobs, limits = get_blob_store(settings), Limits.from_settings(settings)

    def build(dest: Path) -> None:
        _build(kind, blobs, sha256, dest, label_column, limits)
        log.info("dataset %s (%s) fetched and unpacked to the cache", sha256[:12], kind)

    entry = cache(settings).use(cache_name(kind, sha256, label_column), build, size_hint=lambda: blobs.size(sha256))
    path = entry.__enter__()
    holding = getattr(_task, "held", None)
    if holding is None:
        entry.__exit__(None, None, None)
    else:
        holding.append(entry)
    return str(path.relative_to(settings.dataset_root))


def _build(kind: str, blobs: BlobStore, sha256: str, dest: Path, label_column: str, limits: Limits) -> None:
    """The trainer's form of a blob at `dest`: the blob itself (npz), converted (csv) or extracted (images)."""
    local = blobs.local_path(sha256)  # the file store's own file: read in place, never copied to be read
    if kind == "npz":
        if local is None:
            blobs.fetch(sha256, dest)
            return
        try:
            os.link(local, dest)  # same filesystem: no copy
        except OSError:
            shutil.copyfile(local, dest)
        return
    source = local or dest.with_name(dest.name + "-source")  # beside dest: swept with it if this is killed
    try:
        if local is None:
            blobs.fetch(sha256, source)
        if kind == "csv":
            table = read_csv(source, label_column)
            assert table.x is not None and table.y is not None
            with dest.open("wb") as f:
                np.savez(f, x=table.x, y=table.y)
        elif kind == "images":
            extract_images(source, dest, limits)
        else:
            raise ValueError(f"Unknown dataset kind: {kind!r}")
    finally:
        if local is None:
            source.unlink(missing_ok=True)
