"""One error shape for every 4xx/5xx: {"detail": [{"loc", "msg", "type"}]}, as FastAPI's own 422s."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A check after parsing failed: rendered like a validation error, naming the field."""

    def __init__(self, status: int, loc: Sequence[str | int], msg: str, type: str = "value_error") -> None:
        super().__init__(msg)
        self.status, self.loc, self.msg, self.type = status, list(loc), msg, type
        self.headers: dict[str, str] = {}


def detail(loc: Sequence[str | int], msg: str, type: str) -> dict[str, list[dict[str, object]]]:
    return {"detail": [{"loc": list(loc), "msg": msg, "type": type}]}


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(detail(exc.loc, exc.msg, exc.type), status_code=exc.status, headers=exc.headers)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(jsonable_encoder(value), allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


async def _invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape, but an echoed input that JSON can't carry (NaN, Infinity) is left out, not a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        item = {k: err[k] for k in ("type", "loc", "msg") if k in err}
        if "input" in err and _json_safe(err["input"]):
            item["input"] = err["input"]
        if "ctx" in err:
            item["ctx"] = {
                k: v if _json_safe(v) and not isinstance(v, Exception) else str(v) for k, v in err["ctx"].items()
            }
        errors.append(item)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return JSONResponse(
        detail(["database"], "the database is unavailable; try again shortly", "service_unavailable"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _broker_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", exc)
    return JSONResponse(
        detail(["broker"], "the task queue is unavailable; try again shortly", "service_unavailable"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(DBAPIError, _database_down)
    for exc in (BrokerError, RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(exc, _broker_down)
