"""Object storage behind one interface: `file:///path` (a folder) or `s3://bucket/prefix` (any S3-compatible store).

Everything that must outlive one host — uploaded datasets, population checkpoints — goes through a `Storage`,
so a worker on another machine with an empty disk can take any run. `open_storage(url)` picks the backend:

- `file:///path`: files under that folder (`FileStorage`); the default is the data dir, so the layout is
  the one lrlab has always used (`blobs/ab/<sha256>`, `checkpoints/pbt/...`).
- `s3://bucket/prefix`: `S3Storage` over obstore; the endpoint and credentials come from the standard AWS
  variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), and an
  `http://` endpoint (a local MinIO, the tests' moto server) works with only those set.

Keys are relative, `/`-separated names: segments of letters, digits, `_`, `-` and `.`, none starting with a
dot (the file backend keeps its temporary files under dotted names, out of every listing). Every put is
atomic: a reader sees the whole object or none.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from lrlab.settings import Settings, get_settings
from lrlab.storage.keys import check_url, checked_key, checked_prefix

__all__ = [
    "CHUNK_BYTES",
    "NotFound",
    "Storage",
    "StorageError",
    "check_url",
    "checked_key",
    "checked_prefix",
    "default_url",
    "get_storage",
    "open_storage",
    "shared_storage",
]

CHUNK_BYTES = 1 << 20  # streamed reads hand out about this much at a time


class NotFound(KeyError):
    """No object under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object {self.key!r} in storage"


class StorageError(OSError):
    """The store could not be reached or refused the request (retry later: not the caller's fault)."""


class Storage(Protocol):
    url: str

    def put_file(self, key: str, source: Path | BinaryIO, *, move: bool = False) -> None:
        """Store a local file (a path, or a binary file object read from its position) under `key`, streaming.

        move=True: `source` is a path this call consumes (renamed in place where it can be, else deleted once
        the object is stored): an upload's staging file leaves no copy behind.
        """
        ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, dest: Path) -> None:
        """Stream the object into `dest` (written under a temporary name, renamed when whole). NotFound."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory (checkpoints: small). NotFound."""
        ...

    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The object's bytes a chunk at a time, never all in memory. NotFound (on the first next())."""
        ...

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object. NotFound."""
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes. NotFound."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object if it is there."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every key under the folder `prefix` (recursively), in no particular order."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under the folder `prefix`; how many were removed."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's own file when the store is a local folder (read it, never write it); else None."""
        ...


def default_url(data_dir: Path) -> str:
    """`file://` URL of the data dir: the store lrlab has always kept its files in."""
    return Path(data_dir).expanduser().resolve().as_uri()


def open_storage(url: str) -> Storage:
    """The backend for a storage URL; ValueError names what is wrong with it."""
    scheme, where, prefix = check_url(url)
    if scheme == "file":
        from lrlab.storage.files import FileStorage

        return FileStorage(Path(where))
    from lrlab.storage.s3 import S3Storage

    return S3Storage(where, prefix)


_opened: dict[tuple[str, ...], Storage] = {}
_opened_lock = threading.Lock()
# A client is built from these as they are when it is opened; one opened under other values is another client.
CLIENT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_REGION")


def shared_storage(url: str) -> Storage:
    """One backend per URL and process: its connection pool is reused; a forked child opens its own."""
    key = (url, str(os.getpid()), *(os.environ.get(name, "") for name in CLIENT_VARIABLES))
    with _opened_lock:
        if key not in _opened:
            _opened[key] = open_storage(url)
        return _opened[key]


def get_storage(settings: Settings | None = None) -> Storage:
    """The store LRLAB_STORAGE_URL names (the data dir by default), shared within this process."""
    return shared_storage((settings or get_settings()).storage_url)
