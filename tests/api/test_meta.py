"""Health, readiness, catalog, OpenAPI bounds, and the api's promise never to import torch."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest


def test_import_api_does_not_import_torch() -> None:
    code = "import sys, api.main; assert 'torch' not in sys.modules and 'trainer' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.service
def test_health_and_ready(api_client: Any) -> None:
    assert api_client.get("/healthz").json() == {"status": "ok"}
    ready = api_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.service
def test_catalog_lists_everything_with_defaults(api_client: Any) -> None:
    cat = api_client.get("/v1/catalog").json()
    # (plugins live workers offer are listed too: tests/e2e/test_plugins.py)
    assert {d["name"] for d in cat["datasets"] if not d["plugin"]} == {"digits", "mnist1d", "spirals", "blobs"}
    assert {m["name"] for m in cat["models"] if not m["plugin"]} == {"mlp", "cnn", "resnet", "sequential"}
    opts = {o["name"]: o["hyperparameters"] for o in cat["optimizers"]}
    assert set(opts) == {"sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta"}
    assert opts["adam"]["lr"]["default"] == 0.001 and opts["adam"]["betas"]["default"] == [0.9, 0.999]
    assert opts["adadelta"]["lr"]["default"] == 1.0 and opts["adamw"]["weight_decay"]["default"] == 0.01
    assert opts["sgd"]["lr"]["exclusiveMinimum"] == 0 and opts["sgd"]["lr"]["maximum"] == 1000
    assert {s["kind"] for s in cat["schedules"]} == {
        "constant",
        "step",
        "multistep",
        "piecewise",
        "exponential",
        "cosine",
    }


@pytest.mark.service
def test_openapi_shows_bounds_and_each_optimizer(api_client: Any) -> None:
    schema = api_client.get("/openapi.json").json()
    comps = schema["components"]["schemas"]
    assert comps["RunSpec"]["properties"]["epochs"]["maximum"] == 10000
    assert comps["RunSpec"]["properties"]["batch_size"]["minimum"] == 1
    for name in ("SgdSpec", "RmspropSpec", "AdamSpec", "AdamwSpec", "AdagradSpec", "AdadeltaSpec"):
        assert name in comps
    assert "/v1/runs/{run_id}/curves" in schema["paths"]
    assert api_client.get("/docs").status_code == 200


@pytest.mark.service
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_name_no_outside_host(api_client: Any, page: str) -> None:
    """Swagger UI and ReDoc come from the api itself (fastapi-offline's copies): the pages work offline."""
    resp = api_client.get(page, headers={"Authorization": ""})  # no key needed to read the docs
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "http://" not in html and "https://" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= (3 if page == "/docs" else 2)  # script (+ stylesheet) and the favicon
    for url in assets:
        asset = api_client.get(url, headers={"Authorization": ""})
        assert url.startswith("/") and not url.startswith("//"), url  # this host, not a protocol-relative CDN
        assert asset.status_code == 200 and len(asset.content) > 100, url
