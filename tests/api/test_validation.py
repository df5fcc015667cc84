"""Bad input gets a 422 naming the field (never a 500); unknown ids get 404."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_access import settings_env

pytestmark = pytest.mark.service


def post(client: Any, body: Any) -> Any:
    return client.post("/v1/runs", json=body)


def locs(resp: Any) -> list[list[Any]]:
    return [d["loc"] for d in resp.json()["detail"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"dataset": "imagenet"}, ["body", "dataset", "name"]),
        ({"model": "transformer"}, ["body", "model", "name"]),  # no live worker offers it (a plugin's name)
        ({"optimizer": {"name": "lion", "lr": 0.1}}, ["body", "optimizer"]),
        ({"optimizer": {"name": "adam", "lr": 0}}, ["body", "optimizer", "adam", "lr"]),
        ({"optimizer": {"name": "adam", "lr": -1}}, ["body", "optimizer", "adam", "lr"]),
        ({"optimizer": {"name": "sgd", "lr": 1001}}, ["body", "optimizer", "sgd", "lr"]),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 1.5}}, ["body", "optimizer", "sgd", "momentum"]),
        ({"optimizer": {"name": "sgd", "lr": 0.1, "nesterov": True}}, ["body", "optimizer", "sgd", "nesterov"]),
        ({"optimizer": {"name": "adam", "betas": [0.9, 1.0]}}, ["body", "optimizer", "adam", "betas", 1]),
        ({"optimizer": {"name": "rmsprop", "alpha": 2}}, ["body", "optimizer", "rmsprop", "alpha"]),
        ({"optimizer": {"name": "adadelta", "rho": -0.1}}, ["body", "optimizer", "adadelta", "rho"]),
        ({"optimizer": {"name": "adam", "momentun": 0.9}}, ["body", "optimizer", "adam", "momentun"]),
        ({"epochs": 0}, ["body", "epochs"]),
        ({"epochs": 10001}, ["body", "epochs"]),
        ({"batch_size": 0}, ["body", "batch_size"]),
        ({"device": "tpu"}, ["body", "device"]),
        ({"schedule": {"kind": "multistep", "milestones": [5, 3]}}, ["body", "schedule", "multistep", "milestones"]),
        ({"schedule": {"kind": "piecewise", "boundaries": [2], "values": [0.1]}}, ["body", "schedule", "piecewise"]),
        ({"schedule": {"kind": "warp"}}, ["body", "schedule"]),
        ({"dataset": {"path": "../etc/passwd"}}, ["body", "dataset", "path"]),
        ({"dataset": {"path": "/etc/passwd"}}, ["body", "dataset", "path"]),
    ],
)
def test_create_run_rejects_bad_field(api_client: Any, body: dict[str, Any], loc: list[Any]) -> None:
    resp = post(api_client, body)
    assert resp.status_code == 422, resp.text
    assert loc in locs(resp), resp.json()


@pytest.mark.parametrize("raw", ['{"optimizer": {"name": "adam", "lr": NaN}}', '{"epochs": Infinity}'])
def test_create_run_rejects_non_finite_numbers(api_client: Any, raw: str) -> None:
    resp = api_client.post("/v1/runs", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text


def test_create_run_rejects_malformed_json(api_client: Any) -> None:
    resp = api_client.post("/v1/runs", content=b'{"epochs": 3,', headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["type"] == "json_invalid"
    assert resp.json()["detail"][0]["loc"][0] == "body"


def test_get_run_unknown_is_404(api_client: Any) -> None:
    for path in (f"/v1/runs/{uuid.uuid4()}", f"/v1/runs/{uuid.uuid4()}/curves", "/v1/runs/not-a-uuid"):
        resp = api_client.get(path)
        assert resp.status_code == 404, path
        assert resp.json()["detail"][0]["loc"] == ["path", "run_id"]
    assert api_client.post(f"/v1/runs/{uuid.uuid4()}/cancel").status_code == 404


def test_list_runs_rejects_bad_cursor_and_status(api_client: Any) -> None:
    resp = api_client.get("/v1/runs", params={"cursor": "garbage"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "cursor"]
    resp = api_client.get("/v1/runs", params={"status": "exploded"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "status"]


# --- numbers are numbers, text is text ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"optimizer": {"name": "sgd", "lr": True}}, ["body", "optimizer", "sgd", "lr"]),
        ({"optimizer": {"name": "sgd", "lr": "0.1"}}, ["body", "optimizer", "sgd", "lr"]),
        ({"epochs": "2"}, ["body", "epochs"]),
        ({"epochs": True}, ["body", "epochs"]),
        ({"optimizer": {"name": "adam", "betas": [0.9, "0.99"]}}, ["body", "optimizer", "adam", "betas", 1]),
        ({"optimizer": {"name": "adam", "amsgrad": "yes"}}, ["body", "optimizer", "adam", "amsgrad"]),
        ({"dataset": {"name": "digits", "image_size": "32"}}, ["body", "dataset", "image_size"]),
    ],
)
def test_create_run_refuses_numbers_that_are_not_numbers(api_client: Any, body: dict[str, Any], loc: list[Any]) -> None:
    resp = post(api_client, body)
    assert resp.status_code == 422, resp.text
    assert loc in locs(resp), resp.json()


def test_strict_numbers_still_take_an_int_for_a_float(api_client: Any) -> None:
    body = {"device": "cuda", "epochs": 1, "optimizer": {"name": "adam", "lr": 1, "betas": [0, 0.5]}}
    resp = post(api_client, body)
    assert resp.status_code == 202, resp.text
    run = api_client.get(f"/v1/runs/{resp.json()['id']}").json()
    assert run["spec"]["optimizer"]["lr"] == 1.0 and run["spec"]["optimizer"]["betas"] == [0.0, 0.5]
    assert api_client.post(f"/v1/runs/{resp.json()['id']}/cancel").status_code == 200
    grid = {"name": "g", "base": {"device": "cuda", "epochs": 1}, "grid": {"lr": [1, 0.5], "seed": ["1"]}}
    resp = api_client.post("/v1/experiments", json=grid)
    assert resp.status_code == 422 and ["body", "grid", "seed", 0] in locs(resp)
    pbt = {"epochs": 2, "interval": 1, "population": "4", "mutations": {"lr": {"log_uniform": [1e-3, 1]}}}
    resp = api_client.post("/v1/pbt", json=pbt)
    assert resp.status_code == 422 and ["body", "population"] in locs(resp)


@pytest.mark.parametrize(
    ("method", "path", "body", "loc"),
    [
        ("POST", "/v1/runs", '{"dataset": "\\ud800"}', ["body", "dataset"]),
        ("POST", "/v1/runs", '{"dataset": {"path": "a\\u0000b"}}', ["body", "dataset", "path"]),
        ("POST", "/v1/runs", '{"optimizer": {"name": "sgd", "\\udc00": 1}}', ["body", "optimizer", "\\udc00"]),
        ("POST", "/v1/experiments", '{"name": "a\\u0000", "grid": {"seed": [1]}}', ["body", "name"]),
        ("POST", "/v1/experiments", '{"name": "x\\ud800y", "grid": {"seed": [1]}}', ["body", "name"]),
        ("POST", "/v1/pbt", '{"name": "\\u0000", "mutations": {"lr": {"log_uniform": [0.001, 1]}}}', ["body", "name"]),
        ("POST", "/v1/lr-finder", '{"dataset": {"id": "\\u0000"}}', ["body", "dataset", "id"]),
        ("GET", "/v1/runs?dataset=a%00b", None, ["query", "dataset"]),
        ("GET", "/v1/runs?optimizer=%00", None, ["query", "optimizer"]),
        ("GET", "/v1/compare?runs=x%00", None, ["query", "runs"]),
        ("GET", "/v1/compare/charts/val_loss.svg?runs=%00", None, ["query", "runs"]),
        ("GET", "/v1/experiments?cursor=%00", None, ["query", "cursor"]),
    ],
)
def test_nul_and_lone_surrogates_are_422(
    api_client: Any, method: str, path: str, body: str | None, loc: list[Any]
) -> None:
    """Postgres cannot store a NUL and UTF-8 cannot carry a lone surrogate: both were a 503 or a 500."""
    headers = {"content-type": "application/json"} if body is not None else {}
    resp = api_client.request(method, path, content=body, headers=headers)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == loc


@pytest.mark.parametrize(
    "path",
    [
        "/v1/runs/a%00b",
        "/v1/runs/%00/curves",
        "/v1/experiments/%00",
        "/v1/lr-finder/%00",
        "/v1/pbt/x%00",
        "/v1/datasets/%00",
    ],
)
def test_nul_in_a_path_id_is_404(api_client: Any, path: str) -> None:
    resp = api_client.get(path)
    assert resp.status_code == 404, resp.text
    assert resp.json()["detail"][0]["loc"][0] == "path"


def cursor_of(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode()


@pytest.mark.parametrize("path", ["/v1/runs", "/v1/experiments", "/v1/lr-finder", "/v1/pbt", "/v1/datasets"])
@pytest.mark.parametrize(
    "cursor",
    [
        cursor_of(b"2024-01-01T00:00:00|" + str(uuid.uuid4()).encode()),  # a timestamp without a timezone
        cursor_of(b"2024-01-01T00:00:00+00:00|a\x00b"),  # a NUL inside the decoded id
        cursor_of(b"\xff\xfe|x"),
    ],
)
def test_bad_cursor_is_422_on_every_list(api_client: Any, path: str, cursor: str) -> None:
    resp = api_client.get(path, params={"cursor": cursor})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_a_cursor_still_pages(api_client: Any) -> None:
    ids = [post(api_client, {"device": "cuda", "epochs": 1}).json()["id"] for _ in range(3)]
    first = api_client.get("/v1/runs", params={"limit": 2}).json()
    second = api_client.get("/v1/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    seen = [r["id"] for r in first["data"] + second["data"]]
    assert len(set(seen)) == 4 and ids[-1] == seen[0]
    for run_id in ids:
        api_client.post(f"/v1/runs/{run_id}/cancel")


# --- content types, sizes, and the shape of every error -------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data; boundary=x", "text/plain", "application/x-www-form-urlencoded", None]
)
@pytest.mark.parametrize("path", ["/v1/runs", "/v1/experiments", "/v1/lr-finder", "/v1/pbt"])
def test_json_endpoints_answer_415_for_other_content_types(
    api_client: Any, path: str, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    resp = api_client.post(path, content=b'{"dataset": "blobs"}', headers=headers)
    assert resp.status_code == 415, resp.text
    item = resp.json()["detail"][0]
    assert item["loc"] == ["header", "content-type"] and "application/json" in item["msg"]


def test_json_variants_and_bodiless_posts_are_accepted(api_client: Any) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"):
        resp = api_client.post("/v1/runs", content=b'{"device": "cuda"}', headers={"content-type": content_type})
        assert resp.status_code == 202, (content_type, resp.text)
        cancel = api_client.post(f"/v1/runs/{resp.json()['id']}/cancel")  # no body, no Content-Type
        assert cancel.status_code == 200, cancel.text


def test_the_size_cap_holds_on_every_endpoint_but_the_upload(api_client: Any) -> None:
    big = b"x" * ((1 << 20) + 1)
    run_id = post(api_client, {"device": "cuda"}).json()["id"]
    for method, path in (("POST", f"/v1/runs/{run_id}/cancel"), ("GET", "/v1/runs"), ("GET", "/healthz")):
        resp = api_client.request(method, path, content=big, headers={"content-type": "text/plain"})
        assert resp.status_code == 413, (path, resp.text)
    resp = api_client.post("/v1/runs", content=b'{"x": "' + big + b'"}', headers={"content-type": "multipart/x"})
    assert resp.status_code == 415  # the type first: a non-JSON body is never read
    assert api_client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"


def test_422_echoes_only_a_short_prefix_of_the_input(api_client: Any) -> None:
    resp = post(api_client, {"dataset": "blobs", "name": "y" * 100_000, "grid": list(range(10_000))})
    assert resp.status_code == 422
    assert len(resp.content) < 2000, len(resp.content)
    for item in resp.json()["detail"]:
        assert len(json.dumps(item.get("input", ""))) < 200, item


def test_400_and_405_are_in_the_error_shape_with_a_true_allow(api_client: Any) -> None:
    resp = api_client.delete("/v1/runs")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, POST"
    assert resp.json()["detail"][0]["loc"] == ["method"] and resp.json()["detail"][0]["type"] == "method_not_allowed"
    resp = api_client.put(f"/v1/runs/{uuid.uuid4()}/cancel")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    resp = api_client.post("/v1/runs", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert resp.status_code == 400  # nested past the parser's recursion limit
    assert resp.json()["detail"] == [
        {"loc": ["body"], "msg": "There was an error parsing the body", "type": "bad_request"}
    ]
    resp = api_client.get("/v1/no-such-thing")
    assert resp.status_code == 404 and resp.json()["detail"][0]["type"] == "not_found"


def test_nul_and_lone_surrogates_on_sqlite(tmp_path: Path) -> None:
    """The same answers on the embedded database (a NUL path id was a 404 there, a surrogate a 500)."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from lrlab.migrate import upgrade

    with settings_env(LRLAB_DATABASE_URL=f"sqlite:///{tmp_path / 'lrlab.db'}", LRLAB_AUTH="disabled"):
        upgrade()
        with TestClient(create_app(), raise_server_exceptions=False) as client:
            json_type = {"content-type": "application/json"}
            resp = client.post("/v1/runs", content='{"dataset": "\\ud800"}', headers=json_type)
            assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "dataset"]
            name = '{"name": "\\ud800", "grid": {"seed": [1]}}'
            resp = client.post("/v1/experiments", content=name, headers=json_type)
            assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["body", "name"]
            assert client.get("/v1/runs?dataset=%00").status_code == 422
            assert client.get("/v1/runs/%00").status_code == 404
            naive = cursor_of(b"2024-01-01T00:00:00|x")
            assert client.get("/v1/experiments", params={"cursor": naive}).status_code == 422
            assert client.get("/v1/runs").status_code == 200
