"""api/multipart.py on its own: a form streamed in chunks of any size, its file hashed on the way, and each way a
body can be wrong answered with the field it concerns."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from api.errors import ApiError
from api.multipart import StreamedForm, receive

BOUNDARY = "b0undary"
FIELDS = ("file", "name")


def body(*parts: tuple[str, str | None, bytes], end: bool = True) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def stream(raw: bytes, chunk: int, content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> Request:
    chunks = [raw[i : i + chunk] for i in range(0, len(raw), chunk)] or [b""]

    async def next_message() -> dict[str, Any]:
        data = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    return Request(
        {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]}, next_message
    )


def parse(raw: bytes, tmp_path: Path, *, chunk: int = 7, max_bytes: int = 1 << 20, **kw: Any) -> StreamedForm:
    form = StreamedForm(tmp_path / "staged", FIELDS, max_bytes, "LIMIT")
    try:
        asyncio.run(receive(stream(raw, chunk, **kw), form))
    finally:
        form.out.close()
    return form


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_file_and_fields_arrive_whole_whatever_the_chunks(tmp_path: Path, chunk: int) -> None:
    data = bytes(range(256)) * 40 + f"\r\n--{BOUNDARY[:-1]}".encode()  # a near-boundary inside the file
    form = parse(body(("name", None, "café".encode()), ("file", "x.npz", data)), tmp_path, chunk=chunk)
    assert (form.filename, form.text("name"), form.size) == ("x.npz", "café", len(data))
    assert form.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "staged").read_bytes() == data


@pytest.mark.parametrize(
    ("raw", "kw", "status", "loc"),
    [
        (body(("file", "x.csv", b"x" * 101)), {"max_bytes": 100}, 413, ["body", "file"]),
        (body(("file", "x.csv", b"1"), ("label", None, b"y")), {}, 422, ["body", "label"]),
        (body(("file", None, b"1")), {}, 422, ["body", "file"]),
        (body(("file", "a.csv", b"1"), ("file", "b.csv", b"2")), {}, 422, ["body", "file"]),
        (body(("name", None, b"n")), {}, 422, ["body", "file"]),
        (body(("file", "a.csv", b"1"), end=False), {}, 422, ["body"]),
        (body(("file", "a.csv", b"1")), {"content_type": "application/json"}, 415, ["header", "content-type"]),
    ],
    ids=["too-large", "unknown-field", "no-filename", "two-files", "no-file", "ends-early", "not-multipart"],
)
def test_wrong_bodies_name_their_field(
    tmp_path: Path, raw: bytes, kw: dict[str, Any], status: int, loc: list[str]
) -> None:
    with pytest.raises(ApiError) as caught:
        parse(raw, tmp_path, **kw)
    assert (caught.value.status, caught.value.loc) == (status, loc)


def test_text_fields_are_checked(tmp_path: Path) -> None:
    for value, why in ((b"\xff", "UTF-8"), (b"a" * 201, "1 to 200"), (b"a\x00b", "")):
        form = parse(body(("file", "x.csv", b"1"), ("name", None, value)), tmp_path)
        with pytest.raises(ApiError) as caught:
            form.text("name")
        assert caught.value.loc == ["body", "name"] and why in str(caught.value)
