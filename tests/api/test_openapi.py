"""The OpenAPI document declares the errors each operation really gives, in the one error shape."""

from __future__ import annotations

from typing import Any

import pytest

from api.main import create_app

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi()  # built from the routes alone: no services needed


def codes(schema: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(c) for c in schema["paths"][path][method]["responses"]}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("post", "/v1/runs", {401, 404, 409, 413, 415, 422, 429, 503}),
        ("post", "/v1/experiments", {401, 404, 409, 413, 415, 422, 429, 503}),
        ("post", "/v1/lr-finder", {401, 404, 409, 413, 415, 422, 429, 503}),
        ("post", "/v1/pbt", {401, 404, 409, 413, 415, 422, 429, 503}),
        ("post", "/v1/advice", {401, 404, 409, 413, 415, 422, 429, 503}),
        ("post", "/v1/advice/{advice_id}/cancel", {401, 404, 409, 503}),
        ("post", "/v1/datasets", {401, 413, 415, 422, 429, 503}),
        ("get", "/v1/runs", {401, 422, 503}),
        ("get", "/v1/runs/{run_id}", {401, 404, 503}),
        ("post", "/v1/runs/{run_id}/cancel", {401, 404, 409, 503}),
        ("get", "/v1/compare", {401, 404, 422, 503}),
        ("delete", "/v1/datasets/{dataset_id}", {401, 404, 409, 503}),
        ("get", "/v1/pbt/{pbt_id}/schedule", {401, 404, 409, 503}),
        ("get", "/v1/catalog", {401, 503}),
        ("get", "/readyz", {503}),
    ],
)
def test_each_operation_documents_the_errors_it_gives(
    schema: dict[str, Any], method: str, path: str, expected: set[int]
) -> None:
    assert expected <= codes(schema, method, path)


def test_public_operations_document_no_401(schema: dict[str, Any]) -> None:
    assert codes(schema, "get", "/healthz") == {200}
    assert 401 not in codes(schema, "get", "/readyz")


def test_every_error_answer_has_the_error_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    item = schema["components"]["schemas"][error["properties"]["detail"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert set(item["required"]) == {"loc", "msg", "type"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, answer in operation["responses"].items():
                if int(code) < 400:
                    continue
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref in (ERROR_REF, "#/components/schemas/HTTPValidationError"), (method, path, code)
                if int(code) in (429, 503):
                    assert "Retry-After" in answer["headers"], (method, path, code)
