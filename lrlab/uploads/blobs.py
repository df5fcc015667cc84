"""Uploaded files by content hash (SHA-256) in the object store (lrlab.storage), under `blobs/ab/<sha256>`.

The api writes an upload to a staging file on its own disk (it reads the file back to check it), then `put`
streams it into the store and the staging file goes: with S3 storage the api keeps no copy. With the default
store (the data dir) the staging folder is on the same filesystem and `put` is a rename. Workers read blobs
through their cache (worker/uploads.py), never from the api's disk.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from lrlab.settings import Settings
from lrlab.storage import Storage, get_storage

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _checked(sha256: str) -> str:
    if not SHA256.match(sha256):
        raise ValueError(f"Invalid blob hash: {sha256!r}")
    return sha256


def blob_key(sha256: str) -> str:
    sha256 = _checked(sha256)
    return f"blobs/{sha256[:2]}/{sha256}"


class BlobStore:
    def __init__(self, storage: Storage, staging_dir: Path) -> None:
        self.storage = storage
        self.staging_dir = staging_dir

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh local file path to write an upload to; whatever is left there is removed on exit."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staged = self.staging_dir / f"{uuid.uuid4().hex}.part"
        try:
            yield staged
        finally:
            staged.unlink(missing_ok=True)

    def put(self, sha256: str, staged: Path) -> None:
        """Store a staged file under its hash, consuming it (readers never see half a blob). The same bytes by
        construction, so storing a blob that is there already is harmless."""
        self.storage.put_file(blob_key(sha256), staged, move=True)

    def fetch(self, sha256: str, dest: Path) -> None:
        """Download the blob to `dest` (streamed; written under a temporary name, renamed when whole)."""
        self.storage.get_file(blob_key(sha256), dest)

    def local_path(self, sha256: str) -> Path | None:
        """The blob's own file when the store is a local folder and holds it; None otherwise."""
        path = self.storage.local_path(blob_key(sha256))
        return path if path is not None and path.is_file() else None

    def size(self, sha256: str) -> int:
        return self.storage.size(blob_key(sha256))

    def exists(self, sha256: str) -> bool:
        return self.storage.exists(blob_key(sha256))

    def delete(self, sha256: str) -> None:
        self.storage.delete(blob_key(sha256))

    def sweep_staging(self, older_than_seconds: float = 24 * 3600) -> int:
        """Remove staged files a killed process left behind; returns how many."""
        removed, cutoff = 0, time.time() - older_than_seconds
        for part in self.staging_dir.glob("*.part") if self.staging_dir.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        return removed


def get_blob_store(settings: Settings) -> BlobStore:
    return BlobStore(get_storage(settings), settings.staging_dir)
