"""A model described in the request (`sequential`): shapes checked at submission where the API knows the data,
by the worker where only it does; trained alone and fused, each fused member as its separate run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lrlab.schemas.layers import SequentialSpec, infer_shapes
from tests.api.test_access import settings_env
from tests.api.test_datasets import npz_bytes, upload
from tests.conftest import wait_run
from tests.e2e.test_experiments import wait_experiment

pytestmark = pytest.mark.service

CONV: list[Any] = [
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
    "batchnorm",
    "relu",
    {"type": "residual", "layers": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, "gelu"]},
    {"type": "maxpool", "kernel_size": 2},
    "flatten",
    {"type": "linear", "out_features": 32},
    "tanh",
    "linear",
]


def sequential(*layers: Any) -> dict[str, Any]:
    return {"name": "sequential", "layers": list(layers)}


def detail(resp: Any) -> tuple[list[Any], str]:
    assert resp.status_code == 422, resp.text
    (only,) = resp.json()["detail"]
    return only["loc"], only["msg"]


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        (
            {"dataset": "spirals", "model": sequential({"type": "conv2d", "out_channels": 4, "kernel_size": 3})},
            ["body", "model", "layers", 0],
            "conv2d cannot take input of shape (2,): it needs (C, H, W) per sample",
        ),
        (
            {"dataset": "digits", "model": sequential({"type": "conv2d", "out_channels": 4, "kernel_size": 9})},
            ["body", "model", "layers", 0],
            "kernel_size 9 is larger than the input padded by 0 (8 x 8)",
        ),
        (
            {
                "dataset": "mnist1d",
                "model": sequential(
                    "relu",
                    {"type": "residual", "layers": [{"type": "linear", "out_features": 20}]},
                    "flatten",
                    "linear",
                ),
            },
            ["body", "model", "layers", 1],
            "residual: its layers turn (1, 40) into (1, 20)",
        ),
        (
            {
                "dataset": "mnist1d",
                "model": sequential(
                    {"type": "residual", "layers": ["relu", {"type": "maxpool", "kernel_size": 50}]},
                    "flatten",
                    "linear",
                ),
            },
            ["body", "model", "layers", 0, "layers", 1],
            "maxpool cannot take input of shape (1, 40)",
        ),
        (
            {"dataset": "digits", "model": sequential("flatten", {"type": "linear", "out_features": 3})},
            ["body", "model", "layers", 1],
            "a classifier over 10 classes must end with (10,)",
        ),
        (
            {
                "dataset": "digits",
                "model": sequential("flatten", *[{"type": "linear", "out_features": 4096}] * 3, "linear"),
            },
            ["body", "model", "layers"],
            "parameters; at most 20,000,000 (LRLAB_MAX_MODEL_PARAMETERS)",
        ),
        (
            {
                "dataset": "digits",
                "model": sequential(
                    {"type": "conv2d", "out_channels": 64, "kernel_size": 1},
                    {"type": "adaptive_avgpool", "output_size": 1024},
                    "flatten",
                    "linear",
                ),
            },
            ["body", "model", "layers", 1],
            "67,108,864 values per sample",
        ),
    ],
    ids=["rank", "kernel", "residual-shape", "nested", "classes", "parameters", "activations"],
)
def test_a_layer_list_that_does_not_fit_its_data_is_a_422_at_the_layer(
    api_client: Any, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    got_loc, msg = detail(api_client.post("/v1/runs", json=body))
    assert got_loc == loc and words in msg, (got_loc, msg)


def test_the_parameter_bound_is_a_setting(api_client: Any) -> None:
    body = {"dataset": "digits", "model": sequential("flatten", {"type": "linear", "out_features": 32}, "linear")}
    with settings_env(LRLAB_MAX_MODEL_PARAMETERS="1000"):  # 64*32+32 + 32*10+10 = 2410
        loc, msg = detail(api_client.post("/v1/runs", json=body))
    assert loc == ["body", "model", "layers"] and "2,410 parameters; at most 1,000" in msg
    grid = {"name": "g", "base": {"dataset": "digits", "model": body["model"]}, "grid": {"lr": [0.1]}}
    with settings_env(LRLAB_MAX_MODEL_PARAMETERS="1000"):
        assert detail(api_client.post("/v1/experiments", json=grid))[0] == ["body", "base", "model", "layers"]


def test_an_uploads_shape_is_known_at_submission(api_client: Any) -> None:
    rng = np.random.default_rng(0)
    made = upload(api_client, "seq.npz", npz_bytes(x=rng.normal(size=(40, 3, 5)), y=np.arange(40) % 2))
    assert made.status_code in (200, 201), made.text
    dataset = {"id": made.json()["id"]}
    loc, msg = detail(
        api_client.post(
            "/v1/runs",
            json={"dataset": dataset, "model": sequential({"type": "conv2d", "out_channels": 2, "kernel_size": 3})},
        )
    )
    assert loc == ["body", "model", "layers", 0] and "(3, 5)" in msg
    fits = sequential({"type": "conv1d", "out_channels": 2, "kernel_size": 3}, "flatten", "linear")
    assert api_client.post("/v1/runs", json={"dataset": dataset, "model": fits, "epochs": 1}).status_code == 202


def test_a_layer_list_on_a_file_the_api_cannot_see_fails_on_the_worker_naming_the_layer(
    api_client: Any, worker: Any, service_env: dict[str, str]
) -> None:
    root = Path(service_env["LRLAB_DATA_DIR"]) / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(root / "flat.npz", x=rng.normal(size=(50, 8)), y=np.arange(50) % 2)
    model = sequential({"type": "conv2d", "out_channels": 2, "kernel_size": 3}, "flatten", "linear")
    created = api_client.post("/v1/runs", json={"dataset": {"path": "flat.npz"}, "model": model, "epochs": 1})
    assert created.status_code == 202, created.text
    run = wait_run(api_client, created.json()["id"], timeout=120)
    assert run["status"] == "failed" and "layers.0: conv2d cannot take input of shape (8,)" in run["error"], run


def test_a_sequential_model_trains_with_the_parameters_the_api_counted(api_client: Any, worker: Any) -> None:
    spec = {"dataset": "digits", "model": sequential(*CONV), "epochs": 2, "device": "cpu"}
    created = api_client.post("/v1/runs", json=spec)
    assert created.status_code == 202, created.text
    run = wait_run(api_client, created.json()["id"], timeout=120)
    assert run["status"] == "succeeded", run
    layers = SequentialSpec.model_validate(sequential(*CONV)).layers
    assert run["n_parameters"] == infer_shapes(layers, (1, 8, 8), 10).n_parameters
    assert run["spec"]["model"]["layers"][0] == {
        "type": "conv2d",
        "out_channels": 8,
        "kernel_size": 3,
        "stride": 1,
        "padding": 1,
        "bias": True,
    }


def test_a_fused_sequential_grid_matches_separate_runs(api_client: Any, worker: Any) -> None:
    base = {"dataset": "digits", "model": sequential(*CONV), "epochs": 2, "device": "cpu"}
    grid = {"lr": [1e-3, 3e-3], "seed": [0, 1]}
    fused = api_client.post("/v1/experiments", json={"name": "f", "base": base, "grid": grid, "execution": "fused"})
    separate = api_client.post(
        "/v1/experiments", json={"name": "s", "base": base, "grid": grid, "execution": "separate"}
    )
    assert fused.status_code == separate.status_code == 202, fused.text
    f_exp, s_exp = (wait_experiment(api_client, r.json()["id"], timeout=240) for r in (fused, separate))
    assert f_exp["counts"] == s_exp["counts"] == {"succeeded": 4}
    f_runs = [api_client.get(f"/v1/runs/{r['id']}").json() for r in f_exp["runs"]]
    assert len({r["pack_id"] for r in f_runs}) == 1 and f_runs[0]["pack_id"] is not None
    s_ids = {r["label"]: r["id"] for r in s_exp["runs"]}
    for run in f_runs:
        f_points = api_client.get(f"/v1/runs/{run['id']}/curves").json()["points"]
        s_points = api_client.get(f"/v1/runs/{s_ids[run['label']]}/curves").json()["points"]
        for fp, sp in zip(f_points, s_points, strict=True):
            # float32: grouped and separate convolutions round apart (float64 equality: tests/trainer/test_stackable.py)
            for field in ("train_loss", "val_loss"):
                assert fp[field] == pytest.approx(sp[field], rel=1e-3), (run["label"], fp["epoch"], field)
            assert fp["val_accuracy"] == pytest.approx(sp["val_accuracy"], abs=0.01)  # 3 of 359 samples


def test_a_sequential_model_with_dropout_trains_separately_and_says_why(api_client: Any, worker: Any) -> None:
    model = sequential("flatten", {"type": "linear", "out_features": 16}, {"type": "dropout", "p": 0.2}, "linear")
    body = {"name": "d", "base": {"dataset": "digits", "model": model, "epochs": 1}, "grid": {"seed": [0, 1]}}
    exp = wait_experiment(
        api_client, api_client.post("/v1/experiments", json={**body, "execution": "fused"}).json()["id"]
    )
    assert exp["counts"] == {"succeeded": 2}
    for member in exp["runs"]:
        run = api_client.get(f"/v1/runs/{member['id']}").json()
        assert run["pack_id"] is None and run["not_fused_reason"].startswith("dropout is not fusable"), run
