"""Your own data over HTTP, trained by a real worker: each upload kind round-trips to a succeeded run, and the
article's shape on an uploaded image folder: one experiment comparing learning rates for a small CNN."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_datasets import image_folder, shapes_zip, targz_of, toy_csv, toy_npz, upload
from tests.conftest import wait_for, wait_run
from tests.e2e.test_experiments import wait_experiment

pytestmark = pytest.mark.service


def _cache_entries() -> set[str]:
    from lrlab.settings import get_settings

    cache = get_settings().upload_cache_dir
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


@pytest.mark.parametrize(
    ("filename", "make", "fields", "model"),
    [
        ("blobs.npz", toy_npz, {}, "mlp"),
        ("iris-ish.csv", toy_csv, {"label_column": "species"}, "mlp"),
        ("pets.tar.gz", lambda: targz_of(image_folder("pets/", per_class=6)), {}, "cnn"),
    ],
    ids=["npz", "csv", "images"],
)
def test_each_upload_kind_trains_to_succeeded(
    api_client: Any, worker: Any, filename: str, make: Any, fields: dict[str, str], model: str
) -> None:
    created = upload(api_client, filename, make(), **fields)
    assert created.status_code in (200, 201), created.text
    dataset = api_client.get(created.headers["location"]).json()
    spec = {"dataset": {"id": dataset["id"], "image_size": 8}, "model": model, "epochs": 2, "batch_size": 16}
    resp = api_client.post("/v1/runs", json=spec)
    assert resp.status_code == 202, resp.text
    run = wait_run(api_client, resp.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    assert run["summary"]["epochs_completed"] == 2 and run["n_parameters"] > 0
    assert run["spec"]["dataset"] == {"id": dataset["id"], "name": None, "path": None, "image_size": 8}
    assert any(name.startswith(dataset["sha256"]) for name in _cache_entries())  # unpacked once, by hash
    assert (
        api_client.get("/v1/runs", params={"dataset": f"upload:{dataset['id']}"}).json()["data"][0]["id"] == run["id"]
    )


def test_lr_finder_on_an_uploaded_dataset(api_client: Any, worker: Any) -> None:
    dataset = upload(api_client, "blobs.npz", toy_npz()).json()
    job = api_client.post("/v1/lr-finder", json={"dataset": {"id": dataset["id"]}, "steps": 20}).json()

    def finished() -> dict[str, Any] | None:
        body = api_client.get(f"/v1/lr-finder/{job['id']}").json()
        return body if body["status"] not in ("queued", "running") else None

    done = wait_for(finished, 60, "the lr-finder job")
    assert done["status"] == "succeeded", done["error"]
    assert len(done["points"]) > 0 and done["suggested_lr"] is not None


def test_uploaded_image_folder_lr_comparison_in_one_experiment(api_client: Any, worker: Any) -> None:
    """3 classes x 40 synthetic 16x16 shapes, zipped; the default CNN at two lrs; one request."""
    dataset = upload(api_client, "shapes.zip", shapes_zip(), name="shapes").json()
    assert (dataset["n_samples"], dataset["class_names"]) == (120, ["circles", "squares", "triangles"])
    body = {
        "name": "shapes: adam lr",
        "base": {
            "dataset": {"id": dataset["id"], "image_size": 16},
            "model": "cnn",
            "optimizer": {"name": "adam"},
            "epochs": 4,
            "batch_size": 8,
        },
        "grid": {"lr": [1e-3, 3e-3]},
    }
    resp = api_client.post("/v1/experiments", json=body)
    assert resp.status_code == 202, resp.text
    experiment = wait_experiment(api_client, resp.json()["id"], timeout=120)
    assert experiment["counts"] == {"succeeded": 2}, experiment
    compared = api_client.get(f"/v1/experiments/{experiment['id']}/compare", params={"metric": "best_val_accuracy"})
    best = compared.json()["runs"][0]
    assert best["summary"]["best_val_accuracy"] >= 0.9, [r["summary"] for r in compared.json()["runs"]]
    assert best["summary"]["best_epoch"] <= 4
