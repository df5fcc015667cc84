"""Uploaded datasets: upload (streamed to disk, checked, stored by content hash), list, read, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from api.deps import CursorDep, DatasetDep, OwnerDep, SessionDep, SettingsDep
from api.errors import ApiError
from api.multipart import FILE, StreamedForm, receive
from lrlab.models import Dataset
from lrlab.runs.store import page
from lrlab.schemas.datasets import DatasetPublic, DatasetsPublic
from lrlab.settings import Settings
from lrlab.uploads import records, validation
from lrlab.uploads.blobs import get_blob_store

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

FIELDS = (FILE, "name", "label_column")
MULTIPART_SLACK = 64 << 10  # boundaries, part headers and the small fields around the file

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


def _store(session: Session, settings: Settings, owner: str, form: StreamedForm, staged: Path) -> tuple[Dataset, bool]:
    """Everything after the bytes are on disk: dedupe, quota, validation, then one transaction."""
    assert form.filename is not None
    kind = validation.kind_of(form.filename)
    if kind is None:
        raise ApiError(
            422, ["body", "file"], f"unsupported file {form.filename!r}: upload a .npz, .csv, .zip or .tar.gz"
        )
    label_column = form.text("label_column")
    if label_column is not None and kind != "csv":
        raise ApiError(422, ["body", "label_column"], "label_column applies to CSV uploads only")
    if kind == "csv":
        label_column = label_column or "label"
    name = form.text("name") or validation.default_name(form.filename)
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
        found = validation.inspect(staged, kind, validation.Limits.from_settings(settings), label_column or "label")
    except validation.InvalidDataset as exc:
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
        form = StreamedForm(staged, FIELDS, settings.max_upload_bytes, "LRLAB_MAX_UPLOAD_BYTES")
        try:
            await receive(request, form)
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
