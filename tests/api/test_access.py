"""Trust over the real stack: keys (401), owner scoping (404), idempotency (replay, 409), 413, 429, 503."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lrlab import auth as auth_keys
from lrlab.db import session_scope
from tests.conftest import ROOT, make_key

pytestmark = pytest.mark.service


@contextmanager
def settings_env(**values: str) -> Iterator[None]:
    """Change settings for a block: the app reads them through the cached get_settings()."""
    from lrlab import broker, db

    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    db.reset_caches()
    broker.reset_client()
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        db.reset_caches()
        broker.reset_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_or_wrong_key_is_401(api_client: Any) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer lrlab_nope"}, {"Authorization": "Basic abc"}):
        resp = api_client.get("/v1/runs", headers=headers)
        assert resp.status_code == 401, headers
        assert resp.json()["detail"][0]["loc"] == ["header", "authorization"]
        assert resp.headers["www-authenticate"] == "Bearer"
    assert api_client.post("/v1/runs", json={}, headers={"Authorization": ""}).status_code == 401
    assert api_client.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_other_owner_gets_404_and_never_sees_it(api_client: Any, worker: Any) -> None:
    other = auth(make_key("someone else"))
    run_id = api_client.post("/v1/runs", json={"epochs": 1, "dataset": "blobs"}).json()["id"]
    exp = api_client.post("/v1/experiments", json={"name": "mine", "grid": {"seed": [0]}}).json()
    job = api_client.post("/v1/lr-finder", json={"steps": 10}).json()
    for path in (
        f"/v1/runs/{run_id}",
        f"/v1/runs/{run_id}/curves",
        f"/v1/experiments/{exp['id']}",
        f"/v1/experiments/{exp['id']}/compare",
        f"/v1/experiments/{exp['id']}/charts/val_loss.svg",
        f"/v1/lr-finder/{job['id']}",
        f"/v1/lr-finder/{job['id']}/chart.svg",
        f"/v1/compare?runs={run_id}",
    ):
        assert api_client.get(path, headers=other).status_code == 404, path
        assert api_client.get(path).status_code == 200, path
    assert api_client.post(f"/v1/runs/{run_id}/cancel", headers=other).status_code == 404
    for path in ("/v1/runs", "/v1/experiments", "/v1/lr-finder"):
        assert api_client.get(path, headers=other).json()["data"] == []
        assert api_client.get(path).json()["data"]


def test_idempotency_key_replays_and_conflicts(api_client: Any) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"epochs": 1, "device": "cuda"}  # waits on the gpu queue: nothing trains it in this test
    first = api_client.post("/v1/runs", json=body, headers=key)
    again = api_client.post("/v1/runs", json=body, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    mine = [r["id"] for r in api_client.get("/v1/runs", params={"limit": 200}).json()["data"]]
    assert mine.count(first.json()["id"]) == 1
    conflict = api_client.post("/v1/runs", json={**body, "epochs": 2}, headers=key)
    assert conflict.status_code == 409
    assert conflict.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    # the same key is another caller's own business
    other = api_client.post("/v1/runs", json=body, headers={**key, **auth(make_key("other idem"))})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    exp_key = {"Idempotency-Key": "exp-" + key["Idempotency-Key"]}
    e1 = api_client.post("/v1/experiments", json={"name": "x", "base": body, "grid": {"seed": [1, 2]}}, headers=exp_key)
    e2 = api_client.post("/v1/experiments", json={"name": "x", "base": body, "grid": {"seed": [1, 2]}}, headers=exp_key)
    assert e1.json() == e2.json() and len(e1.json()["runs"]) == 2
    for run_id in [first.json()["id"], other.json()["id"], *e1.json()["runs"]]:
        api_client.post(f"/v1/runs/{run_id}/cancel", headers=auth(make_key("x")))  # 404, not theirs
    for run_id in [first.json()["id"], *e1.json()["runs"]]:
        assert api_client.post(f"/v1/runs/{run_id}/cancel").json()["status"] == "cancelled"


def test_json_body_over_1_mib_is_413(api_client: Any) -> None:
    big = b'{"epochs": 1, "pad": "' + b"x" * (1 << 20) + b'"}'
    resp = api_client.post("/v1/runs", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["detail"][0]["loc"] == ["body"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"epochs": 1, "pad": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    resp = api_client.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_quotas_answer_429_with_retry_after(api_client: Any) -> None:
    headers = auth(make_key("quota"))
    with settings_env(LRLAB_MAX_ACTIVE_RUNS_PER_KEY="2"):
        ids = [api_client.post("/v1/runs", json={"device": "cuda"}, headers=headers).json()["id"] for _ in range(2)]
        over = api_client.post("/v1/runs", json={"device": "cuda"}, headers=headers)
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
        assert "LRLAB_MAX_ACTIVE_RUNS_PER_KEY" in over.json()["detail"][0]["msg"]
        grid = api_client.post("/v1/experiments", json={"name": "g", "grid": {"seed": [5, 6]}}, headers=headers)
        assert grid.status_code == 429
        for run_id in ids:
            api_client.post(f"/v1/runs/{run_id}/cancel", headers=headers)
        assert api_client.post("/v1/runs", json={"device": "cuda"}, headers=headers).status_code == 202
    huge = {"name": "huge", "base": {"epochs": 10000}, "grid": {"seed": list(range(64)), "lr": [0.1, 0.01]}}
    resp = api_client.post("/v1/experiments", json=huge, headers=headers)
    assert resp.status_code == 429 and "LRLAB_MAX_REQUEST_WORK" in resp.json()["detail"][0]["msg"]
    too_big = {"name": "cap", "grid": {"seed": list(range(64)), "lr": [0.1, 0.01, 0.001, 0.0001, 1e-5]}}
    assert api_client.post("/v1/experiments", json=too_big, headers=headers).status_code == 422  # a cap, not a quota


def test_broker_or_database_down_is_503_and_writes_nothing(api_client: Any) -> None:
    before = len(api_client.get("/v1/runs", params={"limit": 200}).json()["data"])
    with settings_env(LRLAB_BROKER_URL="redis://127.0.0.1:1/0", LRLAB_BROKER_TIMEOUT_SECONDS="1"):
        resp = api_client.post("/v1/runs", json={"epochs": 1})
        assert resp.status_code == 503 and resp.json()["detail"][0]["loc"] == ["broker"]
        assert resp.headers["retry-after"]
        assert api_client.get("/readyz").status_code == 503
    assert len(api_client.get("/v1/runs", params={"limit": 200}).json()["data"]) == before
    url = os.environ["LRLAB_DATABASE_URL"].replace("127.0.0.1:5432", "127.0.0.1:1")
    with settings_env(LRLAB_DATABASE_URL=url):
        resp = api_client.get("/v1/runs")
        assert resp.status_code == 503 and resp.json()["detail"][0]["loc"] == ["database"]


def test_keys_cli_create_list_revoke(api_client: Any, service_env: dict[str, str]) -> None:
    env = {**os.environ, **service_env}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lrlab.cli", "keys", *args], env=env, cwd=ROOT, capture_output=True, text=True
        )

    created = cli("create", "--name", "cli-made")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("lrlab_")
    assert api_client.get("/v1/runs", headers=auth(key)).status_code == 200
    listed = cli("list")
    assert "cli-made" in listed.stdout and key not in listed.stdout  # only a prefix is ever shown
    assert cli("revoke", "cli-made").returncode == 0
    assert api_client.get("/v1/runs", headers=auth(key)).status_code == 401
    assert cli("revoke", "no-such-key").returncode == 1


def test_keyless_requests_are_401_whatever_their_body(api_client: Any) -> None:
    """The key is checked first, before the Content-Type or the size of a body that is never read."""
    revoked = make_key("revoked soon")
    with session_scope() as session:
        auth_keys.revoke_key(session, "revoked soon")
    big = b"x" * (3 << 20)
    for headers in ({"Authorization": ""}, auth("lrlab_unknown"), auth(revoked)):
        for content_type in ("multipart/form-data; boundary=x", "application/json", "text/plain"):
            resp = api_client.post("/v1/runs", content=big, headers={**headers, "content-type": content_type})
            assert resp.status_code == 401, (headers, content_type, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
        resp = api_client.post(f"/v1/runs/{uuid.uuid4()}/cancel", headers=headers)
        assert resp.status_code == 401


def test_public_pages_need_no_key(api_client: Any) -> None:
    nobody = {"Authorization": ""}
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/", f"/runs/{uuid.uuid4()}"):
        assert api_client.get(path, headers=nobody).status_code == 200, path
    assert api_client.get("/v1/catalog", headers=nobody).status_code == 401
