"""GET /v1/runs/{id}/curves, read as columns, against the path it replaced (ORM rows into dicts, then
analysis.downsample): the same JSON and CSV for rows written with plain SQL. Real Postgres."""

from __future__ import annotations

import csv
import io
import random
from typing import Any

import psycopg
import pytest
from sqlalchemy import select

from lrlab.db import get_settings, session_scope
from lrlab.models import CurvePoint
from lrlab.reports import analysis
from lrlab.runs.store import point_public
from lrlab.schemas import Curves, RunSpec
from tests.rows import new_run

pytestmark = pytest.mark.service

CSV_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def owned_run(api_client: Any) -> str:
    """A run of the test client's own key (no worker takes it: it waits in a queue nobody reads)."""
    run_id = api_client.post("/v1/runs", json=RunSpec(epochs=3).to_json() | {"device": "cuda"}).json()["id"]
    return str(run_id)


def write_plain(run_id: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    dsn = get_settings().database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    rows = []
    epoch = 0
    for _ in range(n):
        epoch += rng.choice((1, 1, 2))
        loss = None if rng.random() < 0.05 else rng.random()
        rows.append(
            (
                run_id,
                epoch,
                rng.random(),
                round(rng.random(), 2),
                loss,
                round(rng.random(), 2),
                0.1,
                rng.random(),
                '["val_loss"]' if loss is None else "[]",
            )
        )
    rng.shuffle(rows)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO curve_point (run_id, epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds,"
            " nonfinite) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )


def reference(run_id: str, max_points: int | None) -> tuple[dict[str, Any], str]:
    with session_scope() as s:
        rows = s.scalars(select(CurvePoint).where(CurvePoint.run_id == run_id).order_by(CurvePoint.epoch))
        raw = [point_public(r) for r in rows]
    pts, info = analysis.downsample(raw, max_points) if max_points else (raw, None)
    sampling = info.model_dump() if info else {"n_raw": len(pts), "n_returned": len(pts)}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(pts)
    return Curves.model_validate({"run_id": run_id, "points": pts, **sampling}).model_dump(mode="json"), out.getvalue()


@pytest.mark.parametrize("max_points", [None, 2, 7, 500, 5000])
def test_curves_equal_the_reference_path(api_client: Any, max_points: int | None) -> None:
    run_id = owned_run(api_client)
    write_plain(run_id, 1200, seed=max_points or 0)
    params = {"max_points": max_points} if max_points else {}
    want_json, want_csv = reference(run_id, max_points)
    got = api_client.get(f"/v1/runs/{run_id}/curves", params=params)
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    assert got.json() == want_json
    got_csv = api_client.get(f"/v1/runs/{run_id}/curves", params={**params, "format": "csv"})
    assert got_csv.status_code == 200 and got_csv.text == want_csv


def test_curves_of_a_run_without_points(api_client: Any) -> None:
    run_id = owned_run(api_client)
    assert api_client.get(f"/v1/runs/{run_id}/curves").json() == reference(run_id, None)[0]
    assert api_client.get(f"/v1/runs/{run_id}/curves", params={"format": "csv"}).text == reference(run_id, None)[1]


def test_curves_of_another_owners_run_are_404(api_client: Any) -> None:
    other = new_run("q-curves")  # the local owner's, not the test key's
    resp = api_client.get(f"/v1/runs/{other}/curves")
    assert resp.status_code == 404 and resp.json()["detail"][0]["loc"] == ["path", "run_id"]
