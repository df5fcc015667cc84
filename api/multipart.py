"""A multipart/form-data body parsed as it streams (python-multipart's push parser): one file part written to a
staged file, hashed and counted on the way and never whole in memory, and a few small text fields.

Everything a caller can get wrong is an ApiError naming the field: an unknown or repeated field, a file part
without a filename, a file over its limit (413), a text field that is too long, not UTF-8 or holds control
characters, a body that is not multipart (415), malformed, or ends early (an interrupted upload).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError
from api.gate import bad_char

FILE = "file"  # the one file part's field name
MAX_FIELD_BYTES = 1000
MAX_TEXT_CHARS = 200
FLUSH_BYTES = 1 << 20  # file bytes are hashed and written in a worker thread, this many at a time


class StreamedForm:
    """The form's `fields` (FILE among them) as they stream: the file part goes to `staged`, at most `max_bytes`
    (`limit` names the setting in the 413), hashed and counted on the way."""

    def __init__(self, staged: Path, fields: tuple[str, ...], max_bytes: int, limit: str) -> None:
        self.allowed, self.max_bytes, self.limit = fields, max_bytes, limit
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
        if name not in self.allowed:
            raise ApiError(422, ["body", name], f"unknown form field {name!r}; expected one of {list(self.allowed)}")
        if name == FILE:
            if b"filename" not in options:
                raise ApiError(422, ["body", FILE], f"`{FILE}` must be a file part (with a filename)")
            if self.filename is not None:
                raise ApiError(422, ["body", FILE], "one file per upload")
            self.filename = options[b"filename"].decode("utf-8", "replace")
            if why := bad_char(self.filename):
                raise ApiError(422, ["body", FILE], f"the file name {why}", "invalid_text")
        elif name in self.fields:
            raise ApiError(422, ["body", name], f"form field {name!r} given twice")
        else:
            self.fields[name] = bytearray()
        self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE:
            self.size += end - start
            if self.size > self.max_bytes:
                raise ApiError(
                    413, ["body", FILE], f"the file is over {self.max_bytes} bytes ({self.limit})", "too_large"
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
        if not value or len(value) > MAX_TEXT_CHARS:
            raise ApiError(422, ["body", name], f"must be 1 to {MAX_TEXT_CHARS} characters")
        if why := bad_char(value):
            raise ApiError(422, ["body", name], f"text {why}", "invalid_text")
        return value


async def receive(request: Request, form: StreamedForm) -> None:
    """Stream the request's body into `form`; the file is on disk (fsynced) once this returns."""
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, ["header", "content-type"], f"send multipart/form-data, the file in `{FILE}`")
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
        raise ApiError(422, ["body", FILE], f"field required: the file part `{FILE}`", "missing")
