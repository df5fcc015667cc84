"""Untrusted archives, read safely: member paths that stay inside, no links, caps against zip and gzip bombs.

The half of upload validation (validation.py) that opens .zip, .npz (a zip) and .tar.gz files. Sizes are
checked before bytes are inflated where the format declares them (zip), and counted while inflating where it
does not (gzip); a .tar.gz is read as a stream, never seeked or extracted by tarfile itself.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from lrlab.settings import Settings

# Members (and a whole .tar.gz) smaller than this are not held to the compression-ratio cap.
RATIO_FLOOR = 4 << 20
FILE = ("body", "file")


class InvalidDataset(ValueError):
    """An upload the service refuses; `loc` and `status` are what the api answers with."""

    def __init__(self, msg: str, loc: tuple[str, ...] = FILE, status: int = 422) -> None:
        super().__init__(msg)
        self.loc, self.status = loc, status


@dataclass(frozen=True)
class Limits:
    max_extracted_bytes: int
    max_compression_ratio: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_extracted_bytes, settings.max_compression_ratio)


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)


def open_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise InvalidDataset(f"not a readable {what} (truncated or not a zip archive): {describe(exc)}") from exc


def check_zip_sizes(zf: zipfile.ZipFile, limits: Limits) -> None:
    """Zip-bomb checks on the declared sizes, before a byte is inflated (zipfile never yields more than these)."""
    total = 0
    for info in zf.infolist():
        total += info.file_size
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
            raise InvalidDataset(
                f"{info.filename!r} would expand {info.file_size / max(info.compress_size, 1):.0f}x, over the"
                f" {limits.max_compression_ratio:g}x compression-ratio cap (LRLAB_MAX_COMPRESSION_RATIO):"
                " refused as a possible zip bomb"
            )
    if total > limits.max_extracted_bytes:
        raise InvalidDataset(
            f"the archive expands to {total} bytes, over the {limits.max_extracted_bytes}-byte cap"
            " (LRLAB_MAX_EXTRACTED_BYTES)",
            status=413,
        )


TAR_ERRORS = (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError)


@dataclass(frozen=True)
class Entry:
    parts: tuple[str, ...]  # the member's path inside the archive, split and checked
    size: int


def safe_parts(name: str) -> tuple[str, ...]:
    """A member path that stays inside the folder it is unpacked into; otherwise InvalidDataset."""
    if "\x00" in name:
        raise InvalidDataset(f"archive member {name!r} has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise InvalidDataset(f"archive member {name!r} has an absolute path: it would escape the dataset folder")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise InvalidDataset(f"archive member {name!r} contains '..': it would escape the dataset folder")
    return parts


class Archive(Protocol):
    def entries(self) -> list[Entry]: ...

    def read(self, wanted: set[tuple[str, ...]]) -> Iterator[tuple[tuple[str, ...], bytes]]: ...


class _Zip:
    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits

    def entries(self) -> list[Entry]:
        with open_zip(self.path, ".zip") as zf:
            check_zip_sizes(zf, self.limits)
            out = []
            for info in zf.infolist():
                parts = safe_parts(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InvalidDataset(f"archive member {info.filename!r} is a symbolic link; links are not accepted")
                if not info.is_dir():
                    out.append(Entry(parts, info.file_size))
            return out

    def read(self, wanted: set[tuple[str, ...]]) -> Iterator[tuple[tuple[str, ...], bytes]]:
        with open_zip(self.path, ".zip") as zf:
            for info in zf.infolist():
                parts = safe_parts(info.filename)
                if parts in wanted and not info.is_dir():
                    try:
                        data = zf.read(info)
                    except ZIP_ERRORS as exc:
                        raise InvalidDataset(f"cannot read {info.filename!r}: {describe(exc)}") from exc
                    yield parts, data


class _Inflated(io.RawIOBase):
    """The gunzipped stream a tar reader consumes, counted: over the size or ratio cap, reading stops."""

    def __init__(self, raw: IO[bytes], limits: Limits) -> None:
        self.raw, self.limits, self.total = raw, limits, 0
        self.gz = gzip.GzipFile(fileobj=raw)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.gz.read(size)
        self.total += len(data)
        if self.total > self.limits.max_extracted_bytes:
            raise InvalidDataset(
                f"the archive expands to more than {self.limits.max_extracted_bytes} bytes (LRLAB_MAX_EXTRACTED_BYTES)",
                status=413,
            )
        packed = max(self.raw.tell(), 1)
        if self.total > RATIO_FLOOR and self.total > self.limits.max_compression_ratio * packed:
            raise InvalidDataset(
                f"the archive expands over {self.limits.max_compression_ratio:g}x its packed size"
                " (LRLAB_MAX_COMPRESSION_RATIO): refused as a possible gzip bomb"
            )
        return data


class _TarGz:
    """Read as a stream (mode r|), twice: once for the member list, once for the images."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits

    def _members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, tuple[str, ...]]]:
        try:
            with self.path.open("rb") as raw, tarfile.open(fileobj=_Inflated(raw, self.limits), mode="r|") as tf:
                for member in tf:
                    parts = safe_parts(member.name)
                    if member.issym() or member.islnk():
                        raise InvalidDataset(f"archive member {member.name!r} is a link; links are not accepted")
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise InvalidDataset(f"archive member {member.name!r} is not a regular file or folder")
                    yield tf, member, parts
        except InvalidDataset:
            raise
        except TAR_ERRORS as exc:
            raise InvalidDataset(f"not a readable .tar.gz (truncated or corrupt): {describe(exc)}") from exc

    def entries(self) -> list[Entry]:
        return [Entry(parts, member.size) for _, member, parts in self._members()]

    def read(self, wanted: set[tuple[str, ...]]) -> Iterator[tuple[tuple[str, ...], bytes]]:
        for tf, member, parts in self._members():
            if parts in wanted:
                extracted = tf.extractfile(member)
                assert extracted is not None
                yield parts, extracted.read()


def open_archive(path: Path, limits: Limits) -> Archive:
    """A .zip or a .tar.gz, told apart by their first bytes."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        return _Zip(path, limits)
    if magic[:2] == b"\x1f\x8b":
        return _TarGz(path, limits)
    raise InvalidDataset("an image dataset must be a .zip or a .tar.gz archive (this is neither)")
