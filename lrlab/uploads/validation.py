"""Uploaded datasets, checked before anything is stored: .npz arrays, CSV tables and image archives.

Torch-free (numpy and Pillow only), so the api validates an upload itself, and a worker unpacks the same
file with the same checks. Every check reads in bounded chunks: a 2 GiB upload never sits in memory.
What passes here is exactly what trainer/data.py loads: the same image suffixes, class folders, labels.
"""

from __future__ import annotations

import array
import csv
import hashlib
import io
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

# InvalidDataset and Limits live with the archive readers, which raise and obey them; callers take them from here.
from lrlab.uploads.archives import (
    ZIP_ERRORS,
    Entry,
    InvalidDataset,
    Limits,
    check_zip_sizes,
    describe,
    open_archive,
    open_zip,
)

KINDS = ("npz", "csv", "images")
SUFFIXES = {".npz": "npz", ".csv": "csv", ".zip": "images", ".tar.gz": "images", ".tgz": "images"}
# trainer/data.py reads these from a class folder (tests/api/test_datasets.py keeps the two in step)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_IMAGE_SIZE = 32  # DatasetRef.image_size's default: the input_shape shown for image datasets
MAX_CLASSES = 10_000
MAX_CSV_COLUMNS = 100_000
MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_PIXELS = 40_000_000
CHUNK = 8 << 20
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the trainer trains in float32: larger values become inf


@dataclass(frozen=True)
class Inspection:
    kind: str
    n_samples: int
    n_classes: int
    input_shape: list[int]
    class_names: list[str] | None


def kind_of(filename: str) -> str | None:
    lower = filename.lower()
    return next((kind for suffix, kind in SUFFIXES.items() if lower.endswith(suffix)), None)


def default_name(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    suffix = next((s for s in SUFFIXES if lower.endswith(s)), "")
    return (base[: len(base) - len(suffix)] or base)[:200] or "dataset"


def inspect(path: Path, kind: str, limits: Limits, label_column: str = "label") -> Inspection:
    """Check a staged upload end to end and describe it; raises InvalidDataset naming the problem."""
    if kind == "npz":
        return _inspect_npz(path, limits)
    if kind == "csv":
        table = read_csv(path, label_column, keep=False)
        return Inspection("csv", table.n_samples, len(table.class_names), [table.n_features], table.class_names)
    if kind == "images":
        return _inspect_images(path, limits)
    raise ValueError(f"Unknown dataset kind: {kind!r}")


def cache_name(kind: str, sha256: str, label_column: str = "") -> str:
    """Where a worker keeps the trainer-ready form, relative to the upload cache dir."""
    if kind == "images":
        return sha256  # the extracted class folders
    if kind == "csv":  # one file can be read with different label columns
        return f"{sha256}-{hashlib.sha256(label_column.encode()).hexdigest()[:12]}.npz"
    return f"{sha256}.npz"


# --- .npz -----------------------------------------------------------------------------------------


def _read_exact(f: IO[bytes], n: int) -> bytes:
    parts, left = [], n
    while left:
        buf = f.read(left)
        if not buf:
            break
        parts.append(buf)
        left -= len(buf)
    return b"".join(parts)


def _scan_array(zf: zipfile.ZipFile, member: str, each: Callable[[np.ndarray], None]) -> tuple[tuple[int, ...], Any]:
    """Read one .npy member chunk by chunk (`each` sees every chunk); returns its shape and dtype."""
    what = member.removesuffix(".npy")
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _fortran, dtype = read_header(f)
            if dtype.hasobject:
                raise InvalidDataset(f"array {what!r} holds Python objects (pickles are not accepted)")
            if dtype.kind not in "biuf":
                raise InvalidDataset(f"array {what!r} must be numeric, got dtype {dtype}")
            left = math.prod(shape) * dtype.itemsize
            step = max(CHUNK // dtype.itemsize, 1) * dtype.itemsize
            while left:
                buf = _read_exact(f, min(step, left))
                if len(buf) < min(step, left):
                    raise InvalidDataset(
                        f"array {what!r} is truncated: shape {shape} needs more data than the file has"
                    )
                left -= len(buf)
                each(np.frombuffer(buf, dtype=dtype))
            while f.read(CHUNK):  # to the member's end, so zipfile checks its CRC
                pass
    except InvalidDataset:
        raise
    except ZIP_ERRORS as exc:
        raise InvalidDataset(f"cannot read array {what!r}: {describe(exc)}") from exc
    return tuple(shape), dtype


def _inspect_npz(path: Path, limits: Limits) -> Inspection:
    with open_zip(path, ".npz") as zf:
        check_zip_sizes(zf, limits)
        names = set(zf.namelist())
        members = {k: next((m for m in (f"{k}.npy", k) if m in names), None) for k in ("x", "y")}
        missing = [k for k, m in members.items() if m is None]
        if missing:
            have = sorted(n.removesuffix(".npy") for n in names)
            raise InvalidDataset(f"the .npz lacks array(s) {missing}: it needs x (features) and y (labels); has {have}")
        assert members["x"] is not None and members["y"] is not None

        def finite(chunk: np.ndarray) -> None:
            if chunk.dtype.kind == "f":
                with np.errstate(invalid="ignore"):
                    ok = bool(np.all(np.abs(chunk) <= FLOAT32_MAX))  # False for NaN, inf and float32 overflow
                if not ok:
                    raise InvalidDataset("x holds NaN or infinite values (or values too large for float32)")

        x_shape, _ = _scan_array(zf, members["x"], finite)
        labels = _Labels()
        y_shape, y_dtype = _scan_array(zf, members["y"], labels.add)
    if len(x_shape) == 0:
        raise InvalidDataset("x must have shape (N, ...) with one row per sample, got a scalar")
    if len(y_shape) != 1:
        raise InvalidDataset(f"y must have shape (N,), one label per sample; got {y_shape}")
    if y_dtype.kind not in "iuf":
        raise InvalidDataset(f"y must hold integer labels, got dtype {y_dtype}")
    if x_shape[0] != y_shape[0]:
        raise InvalidDataset(f"x has {x_shape[0]} samples but y has {y_shape[0]} labels")
    input_shape = list(x_shape[1:]) or [1]  # the trainer reads a 1-D x as one feature per sample
    if math.prod(input_shape) == 0:
        raise InvalidDataset(f"x has no features: shape {x_shape}")
    labels.check()
    return Inspection("npz", x_shape[0], len(labels.values), input_shape, None)


class _Labels:
    """The distinct labels of y, gathered chunk by chunk."""

    def __init__(self) -> None:
        self.values: np.ndarray = np.array([], dtype=np.int64)

    def add(self, chunk: np.ndarray) -> None:
        if chunk.dtype.kind == "f" and not (np.all(np.isfinite(chunk)) and np.all(chunk == np.round(chunk))):
            raise InvalidDataset("y must hold integer labels; it has non-integral or non-finite values")
        if chunk.dtype.kind == "b":
            raise InvalidDataset("y must hold integer labels, got dtype bool")
        self.values = np.union1d(self.values, np.unique(chunk))
        if len(self.values) > MAX_CLASSES:
            raise InvalidDataset(f"y has more than {MAX_CLASSES} distinct labels")

    def check(self) -> None:
        if len(self.values) < 2:
            raise InvalidDataset(f"a classifier needs at least 2 classes; y has {len(self.values)}")


# --- CSV ------------------------------------------------------------------------------------------


@dataclass
class Table:
    n_samples: int
    n_features: int
    class_names: list[str]
    x: np.ndarray | None = None  # (N, F) float32, with keep=True
    y: np.ndarray | None = None  # (N,) int64 index into class_names


def _label_order(labels: list[str]) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others as text."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def read_csv(path: Path, label_column: str, *, keep: bool = True) -> Table:
    """A header row, one named label column, every other column a finite number. One pass; rows kept if asked."""
    label_loc = ("body", "label_column")
    values = array.array("f")  # 4 bytes a value: a large table fits where a list of floats would not
    first_seen: dict[str, int] = {}
    y = array.array("q")
    n_rows = 0
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise InvalidDataset("the CSV is empty: it needs a header row naming its columns")
            header = [h.strip() for h in header]
            if len(header) > MAX_CSV_COLUMNS:
                raise InvalidDataset(f"the CSV has {len(header)} columns; at most {MAX_CSV_COLUMNS}")
            if len(set(header)) != len(header):
                dupes = sorted({h for h in header if header.count(h) > 1})
                raise InvalidDataset(f"the CSV header repeats column name(s) {dupes}")
            if label_column not in header:
                raise InvalidDataset(f"the CSV has no column {label_column!r}; its columns: {header[:20]}", label_loc)
            li = header.index(label_column)
            features = [i for i in range(len(header)) if i != li]
            if not features:
                raise InvalidDataset("the CSV has only the label column: it needs at least one feature column")
            for row in reader:
                if not row or not any(cell.strip() for cell in row):
                    continue  # blank lines
                line = reader.line_num
                if len(row) != len(header):
                    raise InvalidDataset(f"line {line} has {len(row)} fields; the header has {len(header)}")
                label = row[li].strip()
                if not label:
                    raise InvalidDataset(f"line {line}: the label ({label_column!r}) is empty")
                parsed = []
                for i in features:
                    try:
                        number = float(row[i])
                    except ValueError:
                        raise InvalidDataset(
                            f"line {line}, column {header[i]!r}: {row[i]!r} is not a number (every column but"
                            f" {label_column!r} must be numeric)"
                        ) from None
                    if not abs(number) <= FLOAT32_MAX:
                        raise InvalidDataset(f"line {line}, column {header[i]!r}: {row[i]!r} is not a finite number")
                    parsed.append(number)
                index = first_seen.setdefault(label, len(first_seen))
                if len(first_seen) > MAX_CLASSES:
                    raise InvalidDataset(f"the label column has more than {MAX_CLASSES} distinct values")
                if keep:
                    values.extend(parsed)
                    y.append(index)
                n_rows += 1
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"the CSV is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise InvalidDataset(f"the CSV cannot be parsed: {exc}") from exc
    if len(first_seen) < 2:
        raise InvalidDataset(f"a classifier needs at least 2 classes; {label_column!r} has {len(first_seen)}")
    names = _label_order(list(first_seen))
    table = Table(n_rows, len(features), names)
    if keep:
        rank = {name: i for i, name in enumerate(names)}
        remap = np.array([rank[name] for name in first_seen], dtype=np.int64)  # first-seen index -> sorted index
        table.x = np.frombuffer(values, dtype=np.float32).reshape(n_rows, len(features))
        table.y = remap[np.frombuffer(y, dtype=np.int64)]
    return table


# --- image archives -------------------------------------------------------------------------------


def image_layout(entries: list[Entry]) -> dict[tuple[str, ...], tuple[str, str]]:
    """Each image member -> (class, file name): class folders at the root or under one top-level folder."""
    images = [
        e
        for e in entries
        if Path(e.parts[-1]).suffix.lower() in IMAGE_SUFFIXES
        and not any(p.startswith(".") for p in e.parts)
        and e.parts[0] != "__MACOSX"
    ]
    if not images:
        raise InvalidDataset(f"the archive holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    depths, tops = {len(e.parts) for e in images}, {e.parts[0] for e in images}
    if depths == {2}:
        skip = 0
    elif depths == {3} and len(tops) == 1:
        skip = 1
    else:
        odd = max(images, key=lambda e: len(e.parts))
        raise InvalidDataset(
            "images must sit in one sub-folder per class (class/image.png), at the archive root or under one"
            f" top-level folder; found {'/'.join(odd.parts)!r}"
        )
    layout: dict[tuple[str, ...], tuple[str, str]] = {}
    for e in images:
        if e.parts in layout:
            raise InvalidDataset(f"archive member {'/'.join(e.parts)!r} appears twice")
        if e.size > MAX_IMAGE_BYTES:
            raise InvalidDataset(
                f"image {'/'.join(e.parts)!r} is {e.size} bytes; at most {MAX_IMAGE_BYTES}", status=413
            )
        layout[e.parts] = (e.parts[skip], e.parts[skip + 1])
    classes = {c for c, _ in layout.values()}
    if len(classes) < 2:
        raise InvalidDataset(f"a classifier needs at least 2 classes (sub-folders); found {sorted(classes)}")
    return layout


def check_image(data: bytes, where: str) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidDataset(f"image {where!r} is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels")
            image.convert("RGB")  # decodes every pixel, as the trainer will: a corrupt or cut-off file fails here
    except InvalidDataset:
        raise
    except Exception as exc:  # Pillow's decoders raise many types; all mean the same: not an image we can read
        raise InvalidDataset(f"image {where!r} does not decode: {describe(exc)}") from exc


def _inspect_images(path: Path, limits: Limits) -> Inspection:
    archive = open_archive(path, limits)
    layout = image_layout(archive.entries())
    for parts, data in archive.read(set(layout)):
        check_image(data, "/".join(parts))
    classes = sorted({c for c, _ in layout.values()})
    size = DEFAULT_IMAGE_SIZE
    return Inspection("images", len(layout), len(classes), [3, size, size], classes)


def extract_images(path: Path, dest: Path, limits: Limits) -> None:
    """Unpack the checked images into dest/<class>/<file>, the folder layout the trainer reads."""
    archive = open_archive(path, limits)
    layout = image_layout(archive.entries())
    for parts, data in archive.read(set(layout)):
        label, name = layout[parts]
        (dest / label).mkdir(parents=True, exist_ok=True)
        (dest / label / name).write_bytes(data)
