"""One error shape for every 4xx/5xx: {"detail": [{"loc", "msg", "type"}]}, as FastAPI's own 422s."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolExhausted
from starlette.exceptions import HTTPException

from lrlab.storage import StorageError

log = logging.getLogger(__name__)

# PoolExhausted: every pooled connection stayed busy for LRLAB_DB_POOL_TIMEOUT_SECONDS (load, not a caller's fault)
DATABASE_ERRORS = (OperationalError, DBAPIError, PoolExhausted)
ECHO_CHARS = 100  # a 422 shows at most this much of what was sent


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", "optimizer", "lr"], ["query", "cursor"], ["header", …].')
    msg: str
    type: str = Field(description="not_found, conflict, too_large, unsupported_media_type, quota_exceeded, …")


class Error(BaseModel):
    """Every error answer: one or more items, each naming the field and the reason."""

    detail: list[ErrorItem]


class ApiError(Exception):
    """A check after parsing failed: rendered like a validation error, naming the field."""

    def __init__(self, status: int, loc: Sequence[str | int], msg: str, type: str = "value_error") -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.type = status, list(loc), msg, type
        self.headers: dict[str, str] = {}

    def response(self) -> JSONResponse:
        return JSONResponse(detail(self.loc, self.msg, self.type), status_code=self.status, headers=self.headers)


def detail(loc: Sequence[str | int], msg: str, type: str) -> dict[str, list[dict[str, object]]]:
    return {"detail": [{"loc": _loc(loc), "msg": msg, "type": type}]}


def _loc(loc: Sequence[str | int]) -> list[str | int]:
    return [printable(p) if isinstance(p, str) else p for p in loc]


def printable(text: str) -> str:
    """The text with any lone surrogate written as an escape: JSON responses are UTF-8, which cannot hold one."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


def _json_text(value: Any) -> str | None:
    try:
        return json.dumps(jsonable_encoder(value), allow_nan=False)
    except (TypeError, ValueError):
        return None


def short_input(value: Any) -> tuple[bool, Any]:
    """(shown, what a 422 echoes of an input): a short one as sent, a long one as a prefix of its text, never the
    whole of a big body; an input JSON can't carry (NaN, Infinity) is left out."""
    if isinstance(value, str):
        text = value
    else:
        text = _json_text(value)  # type: ignore[assignment]
        if text is None:
            return False, None
        if len(text) <= ECHO_CHARS:
            return True, value
    if len(text) > ECHO_CHARS:
        text = text[:ECHO_CHARS] + "…"
    return True, printable(text)


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape; what it echoes of the input is cut short."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        item: dict[str, Any] = {"type": err["type"], "loc": _loc(err["loc"]), "msg": printable(err["msg"])}
        if "input" in err:
            shown, value = short_input(err["input"])
            if shown:
                item["input"] = value
        if "ctx" in err:
            item["ctx"] = {k: _ctx_value(v) for k, v in err["ctx"].items()}
        errors.append(item)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def _ctx_value(value: Any) -> Any:
    if not isinstance(value, Exception) and _json_text(value) is not None:
        return short_input(value)[1]
    return printable(str(value))[:ECHO_CHARS]


HTTP_ERRORS: Mapping[int, tuple[str, str]] = {
    400: ("body", "bad_request"),
    404: ("path", "not_found"),
    405: ("method", "method_not_allowed"),
}


def method_not_allowed(method: str, allowed: Sequence[str]) -> JSONResponse:
    return JSONResponse(
        detail(["method"], f"{method} is not allowed here; allowed: {', '.join(allowed)}", "method_not_allowed"),
        status_code=405,
        headers={"Allow": ", ".join(allowed)},
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method, an unparsable body) in the one shape."""
    assert isinstance(exc, HTTPException)
    where, kind = HTTP_ERRORS.get(exc.status_code, ("request", "http_error"))
    msg = exc.detail
    if exc.status_code == 404:
        msg = f"no such path: {printable(request.url.path)[:ECHO_CHARS]}"
    return JSONResponse(detail([where], msg, kind), status_code=exc.status_code, headers=exc.headers)


def database_down(exc: Exception) -> JSONResponse:
    if isinstance(exc, PoolExhausted):
        log.warning("no database connection free: %s", exc)
        return JSONResponse(
            detail(["database"], "the server is busy: no database connection came free", "service_unavailable"),
            status_code=503,
            headers={"Retry-After": "2"},
        )
    log.warning("database unavailable: %s", exc)
    return JSONResponse(
        detail(["database"], "the database is unavailable; try again shortly", "service_unavailable"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    return database_down(exc)


async def _broker_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", exc)
    return JSONResponse(
        detail(["broker"], "the task queue is unavailable; try again shortly", "service_unavailable"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _storage_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("object store unavailable: %s", exc)
    return JSONResponse(
        detail(["storage"], "the object store is unavailable; try again shortly", "service_unavailable"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    for db_error in DATABASE_ERRORS:
        app.add_exception_handler(db_error, _database_down)
    for exc in (BrokerError, RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(exc, _broker_down)
    app.add_exception_handler(StorageError, _storage_down)
