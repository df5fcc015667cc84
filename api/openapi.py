"""The OpenAPI document, with the error answers each operation really gives, all in the one error shape.

FastAPI documents the 422s it makes; the rest follow from what a route depends on (read from its
dependencies, so a new route is documented the same way): a key (401), a path id (404), an Idempotency-Key
(409), a JSON body (413, 415), the database (503). Errors a route raises on its own (a 404 for a dataset named
in a body, a 409 on cancel, a 429 quota) it declares in `responses=`; they get the same shape here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api import deps, gate
from api.errors import Error

ERROR_REF = {"$ref": "#/components/schemas/Error"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}}
DESCRIPTIONS = {
    400: "The body could not be parsed (JSON nested too deeply).",
    401: "Missing, unknown or revoked API key (when keys are required).",
    404: "No such object, or another owner's.",
    409: "This Idempotency-Key was used with a different request.",
    413: "Request body over LRLAB_MAX_JSON_BODY_BYTES.",
    415: "A request body not sent as application/json.",
    422: "Invalid input: each item names the field and the reason.",
    429: "Over a quota; retry after Retry-After.",
    503: "The database or the task queue is unavailable; retry after Retry-After.",
}


def error_codes(route: Any) -> set[int]:
    """The error statuses a route gives by what it depends on."""
    codes: set[int] = set()
    dependant = route.dependant
    if deps.requires_key(dependant):
        codes.add(401)
    if any(d.path_params for d in deps.walk(dependant)):
        codes.add(404)  # an unknown id, another owner's, or text no id holds
    if deps.is_idempotent(dependant):
        codes.add(409)
    body = gate.facts(route).body
    if body == "json":
        codes |= {400, 413, 415, 422}  # 400: JSON nested past the parser's depth
    elif body == "own":
        codes.add(422)
    if deps.uses_store(dependant):
        codes.add(503)
    return codes


def _document(operation: dict[str, Any], codes: set[int]) -> None:
    responses = operation.setdefault("responses", {})
    for code in sorted(codes | {int(c) for c in responses if c.isdigit() and int(c) >= 400}):
        answer = responses.setdefault(str(code), {"description": DESCRIPTIONS.get(code, "Error")})
        if code != 422 or "content" not in answer:  # FastAPI's own 422 is this shape, with the input echoed
            answer["content"] = {"application/json": {"schema": ERROR_REF}}
        if code in (429, 503):
            answer.setdefault("headers", RETRY_AFTER)


def document_errors(app: FastAPI, schema: dict[str, Any]) -> None:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    error = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error.pop("$defs", {}))
    schemas["Error"] = error
    for route in gate.flat_routes(app):
        if not isinstance(route.original_route if hasattr(route, "original_route") else route, APIRoute):
            continue
        if not route.include_in_schema:
            continue
        for method in route.methods:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _document(operation, error_codes(route))


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_errors(app, FastAPI.openapi(app))  # FastAPI's own document, made and kept once
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
