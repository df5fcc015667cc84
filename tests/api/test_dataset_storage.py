"""Uploads into S3 storage (a moto server): the api streams the checked file into the bucket and keeps no copy
on its own disk; refused uploads leave nothing in either place; a store that cannot be reached is a 503."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_access import settings_env
from tests.api.test_datasets import dataset_count, toy_npz, upload
from tests.storage_fixtures import MotoServer, moto_server, s3_bucket, s3_env

__all__ = ["moto_server", "s3_bucket", "s3_env"]

pytestmark = pytest.mark.service


def _local_files() -> set[Path]:
    """Every file the api keeps of uploads on its own disk: the file store's blobs and the staging folder."""
    from lrlab.settings import get_settings

    roots = (get_settings().blob_dir, get_settings().staging_dir)
    return {p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def s3_storage(s3_bucket: str, s3_env: dict[str, str]) -> Iterator[str]:
    with settings_env(LRLAB_STORAGE_URL=f"s3://{s3_bucket}/team"):
        yield s3_bucket


def test_an_upload_streams_into_the_bucket_and_leaves_no_copy(
    api_client: Any, s3_storage: str, moto_server: MotoServer
) -> None:
    data = toy_npz(n=3000, seed=7)  # ~200 KiB
    sha = hashlib.sha256(data).hexdigest()
    before = _local_files()
    created = upload(api_client, "big.npz", data)
    assert created.status_code == 201, created.text
    assert moto_server.objects(s3_storage) == {f"team/blobs/{sha[:2]}/{sha}": data}
    assert _local_files() == before  # nothing on the api's disk: no blob, no staging file

    again = upload(api_client, "again.npz", data)  # the same bytes: the same dataset, stored once
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    assert len(moto_server.objects(s3_storage)) == 1 and _local_files() == before

    assert api_client.delete(created.headers["location"]).status_code == 204
    assert moto_server.objects(s3_storage) == {}


def test_a_refused_upload_leaves_nothing_in_the_bucket(
    api_client: Any, s3_storage: str, moto_server: MotoServer
) -> None:
    rows, before = dataset_count(), _local_files()
    resp = upload(api_client, "bad.npz", b"PK\x03\x04 not really a zip")
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"][:2] == ["body", "file"]
    assert moto_server.objects(s3_storage) == {} and _local_files() == before and dataset_count() == rows


def test_an_unreachable_store_is_a_503_and_keeps_nothing(api_client: Any, s3_storage: str) -> None:
    rows, before = dataset_count(), _local_files()
    with settings_env(AWS_ENDPOINT_URL="http://127.0.0.1:9"):  # nothing listens there
        resp = upload(api_client, "ok.npz", toy_npz(seed=11))
    assert resp.status_code == 503, resp.text
    assert resp.json()["detail"][0]["loc"] == ["storage"] and resp.headers["retry-after"] == "5"
    assert dataset_count() == rows and _local_files() == before
