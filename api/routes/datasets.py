"""Uploaded datasets: upload (streamed to disk, checked, stored by content hash), list, read, delete."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from api.deps import CursorDep, DatasetDep, OwnerDep, SessionDep, SettingsDep
from api.errors import ApiError
from api.gate import bad_char
from lrlab import datasets
from lrlab.blobs import get_blob_store
from lrlab.models import Dataset
from lrlab.schemas.datasets import DatasetPublic, DatasetsPublic
from lrlab.settings import Settings
from lrlab.store import page
from lrlab.uploads import records

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

FIELDS = ("file", "name", "label_column")
MAX_FIELD_BYTES = 1000
MULTIPART_SLACK = 64 << 10  # boundaries, part headers and the small fields around the file
FLUSH_BYTES = 1 << 20  # file bytes are hashed and written in a worker thread, this many at a time

UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .npz (arrays x, y), a .csv (header row, a label column, numeric"
                            " features), or a .zip / .tar.gz of an image folder with one sub-folder per class.",
                        },
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 200,
                            "description": "Default: file name.",
                        },
                        "label_column": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 200,
                            "default": "label",
                            "description": "CSV only: the column holding the class labels.",
                        },
                    },
                }
            }
        },
    }
}


class _Form:
    """A multipart body parsed as it streams: the file part goes to the staged file, hashed and counted on the way."""

    def __init__(self, staged: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.out = staged.open("wb")
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.fields: dict[str, bytearray] = {}
        self.done = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._part: str | None = None
        self._header = (bytearray(), bytearray())
        self._disposition = b""

    def parser(self, boundary: bytes) -> MultipartParser:
        callbacks: Any = {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._header[0].extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header[1].extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_end": self._end,
        }
        return MultipartParser(boundary, callbacks)

    def _begin(self) -> None:
        self._part, self._disposition = None, b""

    def _header_end(self) -> None:
        if bytes(self._header[0]).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header[1])
        self._header[0].clear()
        self._header[1].clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name not in FIELDS:
            raise ApiError(422, ["body", name], f"unknown form field {name!r}; expected one of {list(FIELDS)}")
        if name == "file":
            if b"filename" not in options:
                raise ApiError(422, ["body", "file"], "`file` must be a file part (with a filename)")
            if self.filename is not None:
                raise ApiError(422, ["body", "file"], "one file per upload")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            if why := bad_char(self.filename):
                raise ApiError(422, ["body", "file"], f"the file name {why}", "invalid_text")
        elif name in self.fields:
            raise ApiError(422, ["body", name], f"form field {name!r} given twice")
        else:
            self.fields[name] = bytearray()
        self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self.size += end - start
            if self.size > self.max_bytes:
                raise ApiError(
                    413,
                    ["body", "file"],
                    f"the file is over {self.max_bytes} bytes (LRLAB_MAX_UPLOAD_BYTES)",
                    "too_large",
                )
            self._pending.append(bytes(data[start:end]))
            self._pending_bytes += end - start
        elif self._part is not None:
            field = self.fields[self._part]
            field.extend(data[start:end])
            if len(field) > MAX_FIELD_BYTES:
                raise ApiError(422, ["body", self._part], f"at most {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        self.done = True

    @property
    def should_flush(self) -> bool:
        return self._pending_bytes >= FLUSH_BYTES

    def flush(self) -> None:
        for chunk in self._pending:
            self.sha256.update(chunk)
            self.out.write(chunk)
        self._pending.clear()
        self._pending_bytes = 0

    def finish(self) -> None:
        self.flush()
        self.out.flush()
        os.fsync(self.out.fileno())  # on disk before the rename that publishes it
        self.out.close()

    def text(self, name: str) -> str | None:
        if name not in self.fields:
            return None
        try:
            value = self.fields[name].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ApiError(422, ["body", name], "must be UTF-8 text") from None
        if not value or len(value) > 200:
            raise ApiError(422, ["body", name], "must be 1 to 200 characters")
        if why := bad_char(value):
            raise ApiError(422, ["body", name], f"text {why}", "invalid_text")
        return value


async def _receive(request: Request, form: _Form) -> None:
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, ["header", "content-type"], "send the dataset as multipart/form-data, the file in `file`")
    parser = form.parser(options[b"boundary"])
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if form.should_flush:
                await run_in_threadpool(form.flush)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(422, ["body"], f"malformed multipart body: {exc}") from exc
    await run_in_threadpool(form.finish)
    if not form.done:
        raise ApiError(422, ["body"], "the multipart body ended early (an interrupted upload?)")
    if form.filename is None:
        raise ApiError(422, ["body", "file"], "field required: the dataset file", "missing")


def _store(session: Session, settings: Settings, owner: str, form: _Form, staged: Path) -> tuple[Dataset, bool]:
    """Everything after the bytes are on disk: dedupe, quota, validation, then one transaction."""
    assert form.filename is not None
    kind = datasets.kind_of(form.filename)
    if kind is None:
        raise ApiError(
            422, ["body", "file"], f"unsupported file {form.filename!r}: upload a .npz, .csv, .zip or .tar.gz"
        )
    label_column = form.text("label_column")
    if label_column is not None and kind != "csv":
        raise ApiError(422, ["body", "label_column"], "label_column applies to CSV uploads only")
    if kind == "csv":
        label_column = label_column or "label"
    name = form.text("name") or datasets.default_name(form.filename)
    sha256 = form.sha256.hexdigest()
    if (existing := records.find(session, owner, sha256, label_column or "")) is not None:
        return existing, False
    if form.size == 0:
        raise ApiError(422, ["body", "file"], "the file is empty")
    used = records.storage_used(session, owner)
    if used + form.size > settings.max_storage_bytes_per_key:
        error = ApiError(
            429,
            ["body", "file"],
            f"this owner stores {used} bytes of datasets and this file adds {form.size}; at most"
            f" {settings.max_storage_bytes_per_key} (LRLAB_MAX_STORAGE_BYTES_PER_KEY): delete some first",
            "quota_exceeded",
        )
        error.headers["Retry-After"] = "3600"
        raise error
    try:
        found = datasets.inspect(staged, kind, datasets.Limits.from_settings(settings), label_column or "label")
    except datasets.InvalidDataset as exc:
        raise ApiError(
            exc.status, list(exc.loc), str(exc), "too_large" if exc.status == 413 else "value_error"
        ) from exc
    return records.store(
        session,
        get_blob_store(settings),
        owner=owner,
        staged=staged,
        sha256=sha256,
        size=form.size,
        name=name,
        label_column=label_column or "",
        found=found,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    openapi_extra=UPLOAD_FORM,
    responses={
        200: {"model": DatasetPublic, "description": "These bytes were uploaded before: the existing dataset."},
        413: {"description": "Over LRLAB_MAX_UPLOAD_BYTES, or an archive expanding over LRLAB_MAX_EXTRACTED_BYTES"},
        415: {"description": "Not multipart/form-data"},
        429: {"description": "Over LRLAB_MAX_STORAGE_BYTES_PER_KEY"},
    },
)
async def upload_dataset(request: Request, session: SessionDep, owner: OwnerDep, settings: SettingsDep) -> JSONResponse:
    """Upload a dataset: `file` (required), `name`, `label_column` (CSV) as multipart/form-data.

    The file streams to disk (never whole in memory), hashed as it arrives; it is checked in full (readable,
    x and y agree, finite features, at least 2 classes, every image decodes, no archive member escapes its
    folder, no zip bomb) before anything is stored, and a refused upload leaves nothing behind.
    The same bytes uploaded again by the same owner answer **200** with the existing dataset (its name unchanged);
    new ones **201**. Limits: LRLAB_MAX_UPLOAD_BYTES per file (413), LRLAB_MAX_EXTRACTED_BYTES per archive (413),
    LRLAB_MAX_STORAGE_BYTES_PER_KEY for all of an owner's uploads (429).
    """
    await run_in_threadpool(session.rollback)  # nothing written yet: hold no database connection while the body streams
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_upload_bytes + MULTIPART_SLACK:
        raise ApiError(
            413,
            ["body", "file"],
            f"the file is over {settings.max_upload_bytes} bytes (LRLAB_MAX_UPLOAD_BYTES)",
            "too_large",
        )
    blobs = get_blob_store(settings)
    await run_in_threadpool(blobs.sweep_staging)
    with blobs.staging() as staged:
        form = _Form(staged, settings.max_upload_bytes)
        try:
            await _receive(request, form)
            dataset, created = await run_in_threadpool(_store, session, settings, owner, form, staged)
        except ClientDisconnect:
            return JSONResponse({}, status_code=400)  # nobody is listening
        finally:
            form.out.close()
    headers = {"Location": f"/v1/datasets/{dataset.id}"}
    body = records.to_public(dataset).model_dump(mode="json")
    return JSONResponse(body, status_code=201 if created else 200, headers=headers)


@router.get("", response_model=DatasetsPublic)
def list_datasets(
    session: SessionDep,
    owner: OwnerDep,
    cursor: CursorDep = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DatasetsPublic:
    """The caller's uploaded datasets, newest first."""
    mine = select(Dataset).where(Dataset.owner == owner)
    rows, next_cursor = page(session, mine, Dataset, limit=limit, cursor=cursor)
    return DatasetsPublic(data=[records.to_public(d) for d in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset: DatasetDep) -> DatasetPublic:
    return records.to_public(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: {"description": "Queued or running runs use it"}},
)
def delete_dataset(dataset: DatasetDep, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete it; 409 while a queued or running run uses it. Its file goes once no dataset names those bytes."""
    try:
        records.delete(session, get_blob_store(settings), dataset, settings.upload_cache_dir)
    except records.DatasetInUse as exc:
        raise ApiError(409, ["path", "dataset_id"], str(exc), "conflict") from exc
    return Response(status_code=204)
