"""Content-addressed storage of uploaded files (by SHA-256) behind one small interface.

`LocalBlobStore` keeps them under LRLAB_DATA_DIR/blobs, on the volume the api and the workers share.
An S3-compatible store is left out, but nothing outside this module touches paths in the store: it would
implement the same protocol (stage locally, `put` uploads the staged file, `local_path` downloads to a
temporary file) and `get_blob_store` would pick it from the settings.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from lrlab.settings import Settings

SHA256 = re.compile(r"^[0-9a-f]{64}$")
STAGING = "tmp"


class BlobStore(Protocol):
    def staging(self) -> AbstractContextManager[Path]:
        """A fresh local file path to write an upload to; whatever is left there is removed on exit."""
        ...

    def put(self, sha256: str, staged: Path) -> None:
        """Move a staged file into the store under its hash (atomically: readers never see half a blob)."""
        ...

    def open(self, sha256: str) -> BinaryIO: ...

    def local_path(self, sha256: str) -> AbstractContextManager[Path]:
        """A local file holding the blob while the context is open (here the blob itself)."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None: ...


def _checked(sha256: str) -> str:
    if not SHA256.match(sha256):
        raise ValueError(f"Invalid blob hash: {sha256!r}")
    return sha256


class LocalBlobStore:
    """Blobs as files root/ab/abcdef…; uploads are staged in root/tmp, on the same filesystem, so put is a rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        sha256 = _checked(sha256)
        return self.root / sha256[:2] / sha256

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        folder = self.root / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / f"{uuid.uuid4().hex}.part"
        try:
            yield staged
        finally:
            staged.unlink(missing_ok=True)

    def put(self, sha256: str, staged: Path) -> None:
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, dest)  # the same bytes by construction, so replacing an existing blob is harmless

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    @contextlib.contextmanager
    def local_path(self, sha256: str) -> Iterator[Path]:
        path = self.path(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"blob {sha256} is missing from {self.root}")
        yield path

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def sweep_staging(self, older_than_seconds: float = 24 * 3600) -> int:
        """Remove staged files a killed process left behind; returns how many."""
        folder, removed = self.root / STAGING, 0
        cutoff = time.time() - older_than_seconds
        for part in folder.glob("*.part") if folder.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        return removed


def get_blob_store(settings: Settings) -> LocalBlobStore:
    return LocalBlobStore(settings.blob_dir)
