"""`s3://bucket/prefix` storage over obstore (the Rust `object_store` crate of Apache Arrow, behind Python).

Why obstore, not boto3 or s3fs (docs/storage.md has the measurements): it is one 16 MB wheel with no Python
dependencies (boto3 brings botocore, s3transfer, jmespath, dateutil, urllib3: 36 MB; s3fs adds aiobotocore and
aiohttp on top), it costs the api ~4 MiB of memory and 0.04 s to import (boto3: ~36 MiB and 0.24 s), it streams
a file into a multipart upload with a bounded number of parts in flight, and it streams and range-reads
downloads. It reads the standard AWS variables itself (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`/`AWS_REGION`, and the instance or container
credentials when none are set). The one thing it wants told is that a plain `http://` endpoint is meant:
`allow_http` is set here when the endpoint says so.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import obstore
from obstore.exceptions import BaseError
from obstore.exceptions import NotFoundError as ObstoreNotFound
from obstore.store import S3Store

from lrlab.storage import CHUNK_BYTES, NotFound, StorageError, checked_key, checked_prefix

# Multipart: S3's smallest part is 5 MiB; two in flight keep an upload's buffers near 10 MiB (the api takes
# uploads of gigabytes in a process whose whole footprint is ~150 MiB: bench/upload_memory.py).
PART_BYTES = 5 << 20
PARTS_IN_FLIGHT = 2
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")  # the first set wins, as in obstore

T = TypeVar("T")


def endpoint_from_env() -> str | None:
    for name in ENDPOINT_VARIABLES:
        if value := os.environ.get(name, "").strip():
            return value
    return None


def _client_options() -> dict[str, Any]:
    options: dict[str, Any] = {
        "connect_timeout": timedelta(seconds=5),
        # A stalled connection (a host cut off) fails within a minute and is retried; a large object may take
        # longer than that in all, so the whole-request limit is generous.
        "read_timeout": timedelta(seconds=60),
        "timeout": timedelta(minutes=30),
    }
    endpoint = endpoint_from_env()
    if endpoint and endpoint.lower().startswith("http://"):
        options["allow_http"] = True
    return options


RETRY = {"max_retries": 5, "retry_timeout": timedelta(minutes=2)}


def _call(key: str, fn: Callable[[], T]) -> T:
    """Run one obstore call, its errors as ours: NotFound for a missing key, StorageError for the rest."""
    try:
        return fn()
    except (FileNotFoundError, ObstoreNotFound):
        raise NotFound(key) from None
    except BaseError as exc:
        raise StorageError(f"storage request for {key!r} failed: {exc}") from exc


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            client_options=_client_options(),  # type: ignore[arg-type]
            retry_config=RETRY,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    def put_file(self, key: str, source: Path | BinaryIO, *, move: bool = False) -> None:
        checked_key(key)
        # obstore reads a Path itself (outside the GIL) and a file object by .read(); both a part at a time.
        _call(
            key,
            lambda: obstore.put(self._store, key, source, chunk_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT),
        )
        if move and isinstance(source, Path):
            source.unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        checked_key(key)
        _call(key, lambda: obstore.put(self._store, key, data, use_multipart=False))

    def get_file(self, key: str, dest: Path) -> None:
        checked_key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        try:
            with partial.open("wb") as out:
                for chunk in self.iter_chunks(key):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        checked_key(key)
        return _call(key, lambda: bytes(obstore.get(self._store, key).bytes()))

    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        checked_key(key)
        result = _call(key, lambda: obstore.get(self._store, key))
        stream = iter(result.stream(min_chunk_size=chunk_bytes))
        while True:
            chunk = _call(key, lambda: next(stream, None))
            if chunk is None:
                return
            yield bytes(chunk)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        checked_key(key)
        if start < 0 or end < start:
            raise ValueError(f"Invalid byte range: [{start}, {end})")
        if end == start:
            self.size(key)  # NotFound all the same
            return b""
        size = self.size(key)  # S3 answers a range past the end with 416; a file read returns what there is
        end = min(end, size)
        if start >= end:
            return b""
        return bytes(_call(key, lambda: obstore.get_range(self._store, key, start=start, end=end)))

    def size(self, key: str) -> int:
        checked_key(key)
        return int(_call(key, lambda: obstore.head(self._store, key))["size"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        checked_key(key)
        with contextlib.suppress(NotFound):
            _call(key, lambda: obstore.delete(self._store, key))

    def list(self, prefix: str) -> Iterator[str]:
        prefix = checked_prefix(prefix)
        pages = iter(obstore.list(self._store, prefix=prefix, chunk_size=1000))
        while True:
            page = _call(prefix, lambda: next(pages, None))
            if page is None:
                return
            for meta in page:
                yield meta["path"]

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            _call(prefix, lambda batch=batch: obstore.delete(self._store, batch))  # type: ignore[misc]
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return None
