"""Your own model through the service: the example plugin package (examples/lrlab-example-plugin, installed by
tests/conftest.py) advertised by real workers, checked by the API against what they offer, trained alone and
fused; a plugin that shadows a built-in refused; a factory that fails fails its run with the message."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import start_worker, stop_process, wait_for, wait_run
from tests.e2e.test_experiments import wait_experiment
from tests.e2e.test_searches import wait_search

pytestmark = pytest.mark.service

DISTRIBUTION, VERSION = "lrlab-example-plugin", "0.1.0"
MOTIFS = {"name": "motifs", "params": {"n_samples": 300, "length": 12}}
TINY = {"name": "tiny-transformer", "params": {"width": 8, "heads": 2, "depth": 1}}


def locs(resp: Any) -> list[list[Any]]:
    return [d["loc"] for d in resp.json()["detail"]]


def _catalog(client: Any) -> dict[str, Any]:
    return client.get("/v1/catalog").json()


def test_catalog_lists_the_example_plugin_beside_the_builtins_with_its_workers(api_client: Any, worker: Any) -> None:
    cat = _catalog(api_client)
    model = next(m for m in cat["models"] if m["name"] == "tiny-transformer")
    assert model["plugin"] is True and (model["distribution"], model["version"]) == (DISTRIBUTION, VERSION)
    assert model["parameters"]["width"] == {"required": False, "default": 32, "annotation": "int"}
    assert model["parameters"]["dropout"]["default"] == 0.0
    assert len(model["workers"]) == 1 and model["workers"][0].startswith("lrlab-cpu-")
    dataset = next(d for d in cat["datasets"] if d["name"] == "motifs")
    assert dataset["plugin"] is True and dataset["parameters"]["n_samples"]["default"] == 2000
    assert dataset["workers"] == model["workers"]
    assert all(m["plugin"] is False for m in cat["models"] if m["name"] in ("mlp", "cnn", "resnet", "sequential"))
    assert {layer["type"] for layer in cat["layers"]} >= {"linear", "conv2d", "batchnorm", "residual", "flatten"}


def test_specs_are_checked_against_what_live_workers_offer(api_client: Any, worker: Any) -> None:
    bad_model = api_client.post("/v1/runs", json={"model": {"name": "vit"}, "dataset": MOTIFS})
    assert bad_model.status_code == 422 and locs(bad_model) == [["body", "model", "name"]]
    msg = bad_model.json()["detail"][0]["msg"]
    assert "no live worker offers the model 'vit'" in msg and "tiny-transformer" in msg and "mlp" in msg

    typo = {**TINY, "params": {"widht": 8}}
    resp = api_client.post("/v1/runs", json={"model": typo, "dataset": MOTIFS})
    assert resp.status_code == 422 and locs(resp) == [["body", "model", "params", "widht"]], resp.text
    assert "takes no parameter 'widht'" in resp.json()["detail"][0]["msg"]
    mistyped = api_client.post("/v1/runs", json={"model": {**TINY, "params": {"width": 2.5}}, "dataset": MOTIFS})
    assert mistyped.status_code == 422 and locs(mistyped) == [["body", "model", "params", "width"]], mistyped.text
    assert "takes width: int, not 2.5" in mistyped.json()["detail"][0]["msg"]

    for dataset, loc in [
        ({"name": "imagenet"}, ["body", "dataset", "name"]),
        ({"name": "motifs", "params": {"n": 5}}, ["body", "dataset", "params", "n"]),
    ]:
        resp = api_client.post("/v1/runs", json={"model": TINY, "dataset": dataset})
        assert resp.status_code == 422 and locs(resp) == [loc], resp.text

    grid = {"name": "g", "base": {"model": TINY, "dataset": MOTIFS}, "grid": {"model.params.widht": [8, 16]}}
    resp = api_client.post("/v1/experiments", json=grid)
    assert resp.status_code == 422 and locs(resp) == [["body", "grid", "model.params.widht"]], resp.text
    pbt = {"base": {"model": {"name": "vit"}}, "mutations": {"lr": {"log_uniform": [1e-3, 1e-1]}}}
    resp = api_client.post("/v1/pbt", json=pbt)
    assert resp.status_code == 422 and locs(resp) == [["body", "base", "model", "name"]], resp.text
    resp = api_client.post("/v1/lr-finder", json={"model": {**TINY, "params": {"x": 1}}, "dataset": MOTIFS})
    assert resp.status_code == 422 and locs(resp) == [["body", "model", "params", "x"]], resp.text
    nan = api_client.post(
        "/v1/runs",
        content='{"model": {"name": "tiny-transformer", "params": {"width": NaN}}}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422 and locs(nan) == [["body", "model", "plugin", "params", "width"]], nan.text


def test_the_example_plugin_trains_through_the_service_as_it_does_alone(api_client: Any, worker: Any) -> None:
    import trainer
    from trainer.models import count_parameters

    spec = {"model": TINY, "dataset": MOTIFS, "epochs": 2, "device": "cpu", "optimizer": {"name": "adam", "lr": 3e-3}}
    created = api_client.post("/v1/runs", json=spec)
    assert created.status_code == 202, created.text
    run = wait_run(api_client, created.json()["id"], timeout=120)
    assert run["status"] == "succeeded", run
    config = trainer.RunConfig.from_spec(run["spec"])
    data = trainer.load_dataset(config.dataset, config.data_seed)
    assert data.input_shape == (12, 6)
    torch.manual_seed(0)
    assert run["n_parameters"] == count_parameters(trainer.build_model(config.model, data.input_shape, data.n_classes))
    served = api_client.get(f"/v1/runs/{run['id']}/curves").json()["points"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker trains (LRLAB_TORCH_THREADS)
    try:
        alone = trainer.train(config)
    finally:
        torch.set_num_threads(threads)
    assert [p["epoch"] for p in served] == [1, 2]
    for point, reference in zip(served, alone.points, strict=True):
        assert point["train_loss"] == pytest.approx(reference.train_loss, rel=1e-5)
        assert point["val_accuracy"] == pytest.approx(reference.val_accuracy, abs=1e-9)


def test_a_grid_over_a_plugins_parameter_fuses_each_model_and_matches_separate_runs(
    api_client: Any, worker: Any
) -> None:
    base = {"model": TINY, "dataset": MOTIFS, "epochs": 2, "device": "cpu"}
    grid = {"model.params.width": [8, 16], "seed": [0, 1]}
    fused = api_client.post("/v1/experiments", json={"name": "f", "base": base, "grid": grid, "execution": "fused"})
    separate = api_client.post(
        "/v1/experiments", json={"name": "s", "base": base, "grid": grid, "execution": "separate"}
    )
    assert fused.status_code == separate.status_code == 202, fused.text
    f_exp, s_exp = (wait_experiment(api_client, r.json()["id"], timeout=240) for r in (fused, separate))
    assert f_exp["counts"] == s_exp["counts"] == {"succeeded": 4}
    f_runs = {r["label"]: api_client.get(f"/v1/runs/{r['id']}").json() for r in f_exp["runs"]}
    assert set(f_runs) == {f"seed={s} model.params.width={w}" for w in (8, 16) for s in (0, 1)}
    packs: dict[int, set[str]] = {}
    for run in f_runs.values():
        packs.setdefault(run["params"]["model.params.width"], set()).add(run["pack_id"])
    assert [len(ids) for ids in packs.values()] == [1, 1] and None not in set.union(*packs.values())
    assert packs[8] != packs[16]  # one pack per width: the model differs
    assert all(r["not_fused_reason"] is None for r in f_runs.values())
    assert {r["spec"]["model"]["params"]["width"] for r in f_runs.values()} == {8, 16}
    s_runs = {r["label"]: r["id"] for r in s_exp["runs"]}
    for label, run in f_runs.items():
        f_points = api_client.get(f"/v1/runs/{run['id']}/curves").json()["points"]
        s_points = api_client.get(f"/v1/runs/{s_runs[label]}/curves").json()["points"]
        for fp, sp in zip(f_points, s_points, strict=True):
            for field in ("train_loss", "val_loss"):
                assert fp[field] == pytest.approx(sp[field], rel=1e-3), (label, fp["epoch"], field)


def test_a_search_over_a_plugins_parameter_is_checked_against_the_offers_and_trains(
    api_client: Any, worker: Any
) -> None:
    """The issue's space key `model.params.width`: a name the factory does not take, or a model no worker offers,
    is a 422 at the key (at the base's model); the search trains each trial's width through the plugin."""
    base = {"model": TINY, "dataset": MOTIFS, "epochs": 2, "device": "cpu"}
    typo = {"base": base, "space": {"model.params.widht": {"int": [8, 16]}}, "trials": 2}
    resp = api_client.post("/v1/searches", json=typo)
    assert resp.status_code == 422 and locs(resp) == [["body", "space", "model.params.widht"]], resp.text
    assert "takes no parameter 'widht'" in resp.json()["detail"][0]["msg"]
    floats = {"base": base, "space": {"model.params.width": {"uniform": [8, 16]}}, "trials": 2}  # not int
    resp = api_client.post("/v1/searches", json=floats)
    assert resp.status_code == 422 and locs(resp) == [["body", "space", "model.params.width"]], resp.text
    assert "takes width: int, not 8.0" in resp.json()["detail"][0]["msg"], resp.text
    unknown = {"base": {**base, "model": {"name": "vit"}}, "space": {"lr": {"log_uniform": [1e-3, 1e-2]}}}
    resp = api_client.post("/v1/searches", json=unknown)
    assert resp.status_code == 422 and locs(resp) == [["body", "base", "model", "name"]], resp.text

    space = {"model.params.width": {"choice": [8, 16]}, "lr": {"log_uniform": [1e-3, 1e-2]}}
    created = api_client.post(
        "/v1/searches", json={"base": base, "space": space, "trials": 2, "parallel": 2, "sampler": "random"}
    )
    assert created.status_code == 202, created.text
    found = wait_search(api_client, created.json()["id"], timeout=240)
    assert found["status"] == "succeeded" and len(found["trials"]) == 2, found
    for trial in found["trials"]:
        run = api_client.get(f"/v1/runs/{trial['run_id']}").json()
        assert run["status"] == "succeeded"
        assert run["spec"]["model"]["params"]["width"] == trial["params"]["model.params.width"] in (8, 16)
        assert run["n_parameters"] > 0


def test_a_search_whose_trials_fail_in_the_factory_moves_on_and_ends_failed(api_client: Any, worker: Any) -> None:
    """A width the factory refuses passes the API (it checks names and JSON types, not values): each trial's run
    fails with the factory's message, is told failed at once (the worker advances the search: no wait for the
    redispatch timeout, 600 s here), and the search ends `failed`, saying why."""
    base = {"model": {**TINY, "params": {"heads": 2, "depth": 1}}, "dataset": MOTIFS, "epochs": 1, "device": "cpu"}
    space = {"model.params.width": {"choice": [-5]}}
    created = api_client.post("/v1/searches", json={"base": base, "space": space, "trials": 2, "parallel": 1})
    assert created.status_code == 202, created.text
    found = wait_search(api_client, created.json()["id"], timeout=90)
    assert (found["status"], found["error"]) == ("failed", "no trial trained to a result (every one failed)"), found
    assert [t["state"] for t in found["trials"]] == ["failed", "failed"]
    for trial in found["trials"]:
        run = api_client.get(f"/v1/runs/{trial['run_id']}").json()
        assert run["status"] == "failed" and "must be a multiple of heads" in run["error"], run["error"]


def test_a_plugin_model_that_cannot_be_stacked_trains_separately_and_says_why(api_client: Any, worker: Any) -> None:
    dropout = {**TINY, "params": {**TINY["params"], "dropout": 0.1}}
    body = {
        "name": "dropout",
        "base": {"model": dropout, "dataset": MOTIFS, "epochs": 1, "device": "cpu"},
        "grid": {"seed": [0, 1]},
        "execution": "fused",
    }
    exp = wait_experiment(api_client, api_client.post("/v1/experiments", json=body).json()["id"], timeout=120)
    assert exp["counts"] == {"succeeded": 2}
    for member in exp["runs"]:
        run = api_client.get(f"/v1/runs/{member['id']}").json()
        assert run["pack_id"] is None
        assert "draws random numbers" in run["not_fused_reason"], run["not_fused_reason"]


@pytest.mark.parametrize(
    ("model", "dataset", "words"),
    [
        ({**TINY, "params": {"width": 6, "heads": 4}}, MOTIFS, "raised ValueError: width (6) must be a multiple"),
        (TINY, "digits", "reads sequences, input (L, d) or (L,); got (1, 8, 8)"),
        (TINY, {"name": "motifs", "params": {"n_classes": 1}}, "n_classes must be in [2, 64], got 1"),
    ],
    ids=["factory-raises", "wrong-input", "dataset-raises"],
)
def test_a_factory_that_fails_fails_its_run_with_the_message(
    api_client: Any, worker: Any, model: dict[str, Any], dataset: Any, words: str
) -> None:
    created = api_client.post("/v1/runs", json={"model": model, "dataset": dataset, "epochs": 1, "device": "cpu"})
    assert created.status_code == 202, created.text
    run = wait_run(api_client, created.json()["id"], timeout=60)
    assert run["status"] == "failed" and words in run["error"], run["error"]
    assert DISTRIBUTION in run["error"]


def test_the_lr_range_test_sweeps_a_plugin_model(api_client: Any, worker: Any) -> None:
    body = {"model": TINY, "dataset": MOTIFS, "steps": 20, "min_lr": 1e-4, "max_lr": 1.0, "device": "cpu"}
    created = api_client.post("/v1/lr-finder", json=body)
    assert created.status_code == 202, created.text

    def done() -> dict[str, Any] | None:
        job = api_client.get(f"/v1/lr-finder/{created.json()['id']}").json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_for(done, 120, "the range test")
    assert job["status"] == "succeeded" and len(job["points"]) >= 10, job


FAKE = '''
import math

from torch import nn


def wide(input_shape, n_classes, width: int = 4):
    """A linear model another package offers."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))
'''


def _fake_distribution(site: Path) -> None:
    (site / "fake_models.py").write_text(textwrap.dedent(FAKE))
    info = site / "shady_models-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shady-models\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lrlab.models]\nmlp = fake_models:wide\nwide = fake_models:wide\n")


def test_a_worker_advertises_its_plugins_in_its_first_heartbeat_and_refuses_a_shadow(
    api_client: Any, service_env: dict[str, str], tmp_path: Path
) -> None:
    from sqlalchemy import select

    from lrlab.db import session_scope
    from lrlab.models import WorkerHeartbeat

    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site)
    log = tmp_path / "worker.log"
    queue = f"plug{int(time.time() * 1000) % 100000}"
    proc = start_worker({**service_env, "PYTHONPATH": str(site)}, "--queues", queue, log=log)
    try:

        def first_beat() -> dict[str, Any] | None:
            with session_scope() as s:
                rows = s.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.queues == queue)).all()
                return {"hostname": rows[0].hostname, "plugins": rows[0].plugins} if rows else None

        beat = wait_for(lambda: first_beat() or proc.poll() is not None, 90, "the worker's first heartbeat", 0.02)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert beat["plugins"] is not None, "the first heartbeat came without the plugins"
        names = [m["name"] for m in beat["plugins"]["models"]]
        assert "wide" in names and "tiny-transformer" in names and "mlp" not in names
        refused = [r for r in beat["plugins"]["refused"] if r["name"] == "mlp"]
        assert refused and refused[0]["refused"] == "it shadows the built-in model 'mlp'"
        assert "refused model plugin 'mlp' (shady-models 1.0" in log.read_text()

        cat = _catalog(api_client)
        wide = next(m for m in cat["models"] if m["name"] == "wide")
        assert wide["workers"] == [beat["hostname"]] and wide["distribution"] == "shady-models"
        shadow = next(r for r in cat["refused_plugins"] if r["name"] == "mlp")
        assert shadow["workers"] == [beat["hostname"]] and "shadows the built-in model" in shadow["reason"]
        tiny = next(m for m in cat["models"] if m["name"] == "tiny-transformer")
        assert beat["hostname"] in tiny["workers"]
    finally:
        stop_process(proc)
    # gone with its worker: a spec naming its plugin is refused again once no live worker offers it
    wait_for(lambda: all(m["name"] != "wide" for m in _catalog(api_client)["models"]), 30, "the worker to go")
    resp = api_client.post("/v1/runs", json={"model": {"name": "wide"}})
    assert resp.status_code == 422 and locs(resp) == [["body", "model", "name"]]


def test_population_based_training_of_a_plugin_model_runs_distributed(api_client: Any, worker: Any) -> None:
    from tests.e2e.test_pbt import wait_pbt

    body = {
        "base": {"model": TINY, "dataset": MOTIFS, "device": "cpu"},
        "population": 2,
        "epochs": 2,
        "interval": 1,
        "mutations": {"lr": {"log_uniform": [1e-3, 1e-2]}},
    }
    created = api_client.post("/v1/pbt", json=body)
    assert created.status_code == 202, created.text
    done = wait_pbt(api_client, created.json()["id"], timeout=180)
    # auto: a population cannot fall back to separate runs once fused, so a plugin's model trains distributed
    assert done["status"] == "succeeded" and done["execution"] == "distributed", done
    for run_id in created.json()["runs"]:
        run = api_client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "succeeded" and run["spec"]["model"] == TINY and run["n_parameters"] > 0
