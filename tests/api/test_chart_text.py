"""Names users chose reach charts as plain text: never a 500, never a 422 blaming another field."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.service

# matplotlib reads `$...$` as mathtext: an unknown symbol raised (500, or a 422 naming query.log), a deep
# nest of roots recursed past the stack (500), and "cost $5 and $6" was typeset.
NAMES = [r"$\foo$", "$" + r"\sqrt{" * 22 + "x" + "}" * 22 + "$", "cost $5 and $6"]
MEDIA = {"svg": "image/svg+xml", "png": "image/png"}


def _chart(client: Any, path: str, fmt: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith(MEDIA[fmt])
    assert resp.content.startswith(b"\x89PNG" if fmt == "png" else b"<?xml")


@pytest.mark.parametrize("name", NAMES)
def test_experiment_chart_named_with_dollars_is_drawn(api_client: Any, name: str) -> None:
    body = {"name": name, "base": {"dataset": "blobs", "epochs": 1, "device": "cpu"}, "grid": {"lr": [0.01, 0.1]}}
    created = api_client.post("/v1/experiments", json=body)
    assert created.status_code == 202, created.text
    experiment = created.json()
    try:
        for fmt in ("svg", "png"):
            for metric in ("val_loss", "val_accuracy"):
                _chart(api_client, f"/v1/experiments/{experiment['id']}/charts/{metric}.{fmt}", fmt)
            _chart(api_client, f"/v1/experiments/{experiment['id']}/charts/lr.{fmt}?log=true", fmt)
    finally:
        for run_id in experiment["runs"]:
            api_client.post(f"/v1/runs/{run_id}/cancel")


@pytest.mark.parametrize("name", NAMES)
def test_pbt_chart_named_with_dollars_is_drawn(api_client: Any, name: str) -> None:
    body = {
        "name": name,
        "base": {"dataset": "blobs", "device": "cpu", "model": {"name": "mlp", "hidden": [8]}},
        "population": 2,
        "epochs": 2,
        "interval": 1,
        "mutations": {"lr": {"log_uniform": [1e-3, 1e-1]}},
    }
    created = api_client.post("/v1/pbt", json=body)
    assert created.status_code == 202, created.text
    pbt_id = created.json()["id"]
    try:
        for fmt in ("svg", "png"):
            _chart(api_client, f"/v1/pbt/{pbt_id}/charts/val_accuracy.{fmt}", fmt)
    finally:
        api_client.post(f"/v1/pbt/{pbt_id}/cancel")
