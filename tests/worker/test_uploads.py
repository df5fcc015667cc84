"""worker/uploads.py: a worker with an empty disk fetches an uploaded dataset from the store (a folder, or a bucket
on a moto server) into its bounded cache, once; the trainer's loaders read it; entries a task holds stay."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from lrlab.settings import Settings
from lrlab.uploads.blobs import BlobStore, blob_key
from lrlab.uploads.validation import cache_name
from tests.api.test_datasets import image_folder, targz_of, toy_csv, toy_npz
from tests.storage_fixtures import moto_server, s3_bucket, s3_env, storage_url
from worker import uploads

__all__ = ["moto_server", "s3_bucket", "s3_env", "storage_url"]

KINDS = {
    "npz": (toy_npz, ""),
    "csv": (toy_csv, "species"),
    "images": (lambda: targz_of(image_folder("pets/", per_class=3)), ""),
}


def _worker_settings(storage_url: str, root: Path, cache_max_bytes: int = 1 << 30) -> Settings:
    """A worker's settings: its own (empty) data dir, the shared store."""
    return Settings(data_dir=root, storage_url=storage_url, cache_max_bytes=cache_max_bytes)


def _stored(storage_url: str, tmp_path: Path, data: bytes) -> str:
    """Put `data` into the store as the api does (staged, then moved in); its hash."""
    from lrlab.storage import open_storage

    sha = hashlib.sha256(data).hexdigest()
    staged = tmp_path / "api-staging.part"
    staged.write_bytes(data)
    BlobStore(open_storage(storage_url), tmp_path).put(sha, staged)
    assert not staged.exists()
    return sha


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_empty_worker_fetches_each_kind_once(storage_url: str, tmp_path: Path, kind: str) -> None:
    make, label = KINDS[kind]
    sha = _stored(storage_url, tmp_path, make())
    settings = _worker_settings(storage_url, tmp_path / "worker")
    relative = uploads.ensure_cached(kind, sha, label, settings=settings)
    assert settings.dataset_root is not None
    path = settings.dataset_root / relative
    assert relative == f".uploads/{cache_name(kind, sha, label)}" and path.exists()
    if kind == "images":
        assert sorted(p.name for p in path.iterdir()) == ["cats", "dogs"]
    else:
        with np.load(path) as arrays:
            assert set(arrays.files) >= {"x", "y"} and len(arrays["x"]) == len(arrays["y"]) > 0

    from lrlab.storage import open_storage

    open_storage(storage_url).delete(blob_key(sha))  # gone from the store: the cache answers alone now
    assert uploads.ensure_cached(kind, sha, label, settings=settings) == relative


def test_the_file_store_is_read_in_place(tmp_path: Path) -> None:
    """With the default store (the data dir) an npz is linked into the cache, never downloaded or copied."""
    url = (tmp_path / "shared").as_uri()
    sha = _stored(url, tmp_path, toy_npz())
    settings = _worker_settings(url, tmp_path / "shared")
    assert settings.dataset_root is not None
    cached = settings.dataset_root / uploads.ensure_cached("npz", sha, "", settings=settings)
    assert cached.stat().st_ino == (tmp_path / "shared" / blob_key(sha)).stat().st_ino


def test_the_cache_stays_within_its_bound_and_keeps_what_a_task_holds(storage_url: str, tmp_path: Path) -> None:
    shas = [_stored(storage_url, tmp_path, toy_npz(n=400, seed=s)) for s in range(3)]
    size = len(toy_npz(n=400, seed=0))
    settings = _worker_settings(storage_url, tmp_path / "worker", cache_max_bytes=int(size * 1.5))
    assert settings.dataset_root is not None
    with uploads.held():
        first = settings.dataset_root / uploads.ensure_cached("npz", shas[0], "", settings=settings)
        second = settings.dataset_root / uploads.ensure_cached("npz", shas[1], "", settings=settings)
        assert first.exists() and second.exists()  # over the bound, but both held by this task
    assert not first.exists() and second.exists()  # released: the least recently used went
    third = settings.dataset_root / uploads.ensure_cached("npz", shas[2], "", settings=settings)
    assert third.exists() and not second.exists()
    assert uploads.cache(settings).total_bytes() <= settings.cache_max_bytes


def test_a_missing_blob_is_not_found(storage_url: str, tmp_path: Path) -> None:
    from lrlab.storage import NotFound

    settings = _worker_settings(storage_url, tmp_path / "worker")
    with pytest.raises(NotFound):
        uploads.ensure_cached("npz", "a" * 64, "", settings=settings)
    assert settings.dataset_root is not None
    leftovers = [p for p in settings.dataset_root.rglob("*") if p.is_file() and p.parent.name != "entries"]
    assert leftovers == []
