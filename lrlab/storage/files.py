"""`file://` storage: objects as files under one folder, each written under a temporary name and renamed.

A temporary file sits beside its target (`.<name>.<random>.part`, the same filesystem, so the rename is
atomic); it is fsynced before the rename and the folder after it, so a crash leaves the old object or the
new one, never half of one. Names starting with a dot are no key's, so listings never show them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lrlab.storage import CHUNK_BYTES, NotFound, checked_key, checked_prefix

COPY_BYTES = 1 << 20
STALE_PART_SECONDS = 3600  # a temporary file this old belongs to a writer that was killed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partial(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"


def _copy_to(dest: Path, source: BinaryIO) -> None:
    """Copy a stream to `dest` atomically (temporary file, fsync, rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(dest)
    try:
        with partial.open("wb") as out:
            shutil.copyfileobj(source, out, COPY_BYTES)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    _fsync_dir(dest.parent)


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / checked_key(key)

    def put_file(self, key: str, source: Path | BinaryIO, *, move: bool = False) -> None:
        dest = self.path(key)
        if not isinstance(source, Path):
            _copy_to(dest, source)
            return
        if move:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with source.open("rb") as f:
                os.fsync(f.fileno())  # durable before the rename publishes it (a no-op when the writer synced)
            try:
                os.replace(source, dest)  # the same filesystem: no copy
                _fsync_dir(dest.parent)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:  # another filesystem: copy below
                    raise
        with source.open("rb") as f:
            _copy_to(dest, f)
        if move:
            source.unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = _partial(dest)
        try:
            with partial.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        _fsync_dir(dest.parent)

    def _open(self, key: str) -> BinaryIO:
        try:
            return self.path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def get_file(self, key: str, dest: Path) -> None:
        with self._open(key) as f:
            _copy_to(dest, f)

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        with self._open(key) as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"Invalid byte range: [{start}, {end})")
        with self._open(key) as f:
            f.seek(start)
            return f.read(end - start)

    def size(self, key: str) -> int:
        path = self.path(key)
        if not path.is_file():
            raise NotFound(key)
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self.path(key).unlink()

    def list(self, prefix: str) -> Iterator[str]:
        folder = self.root / checked_prefix(prefix)
        for parent, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            base = Path(parent).relative_to(self.root).as_posix()
            for name in files:
                if not name.startswith("."):
                    yield f"{base}/{name}"

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        # What a writer killed long ago left goes too, then the folders left empty (a key put meanwhile stays).
        cutoff = time.time() - STALE_PART_SECONDS
        for parent, _, files in os.walk(self.root / checked_prefix(prefix), topdown=False):
            for name in files:
                part = Path(parent) / name
                with contextlib.suppress(OSError):
                    if name.endswith(".part") and part.stat().st_mtime < cutoff:
                        part.unlink()
            with contextlib.suppress(OSError):
                os.rmdir(parent)
        return len(keys)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)  # where the object is, or would be
