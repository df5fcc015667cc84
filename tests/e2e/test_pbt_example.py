"""examples/pbt_vs_grid.py, reduced, against an embedded `lrlab up`: same compute, a schedule, a faithful replay."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http, _start


def test_pbt_example_compares_with_a_grid_of_the_same_compute_and_replays(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start(["up", "--port", str(port)], tmp_path / "data", tmp_path / "up.log")
    try:
        wait_for(lambda: _http("GET", f"{base}/healthz")[0] == 200, 60, "lrlab up", interval=0.3)
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "pbt_vs_grid.py"),
                *("--url", base, "--dataset", "spirals", "--population", "4", "--epochs", "4", "--interval", "2"),
                *("--out", str(tmp_path / "charts"), "--json", str(tmp_path / "results.json"), "--poll", "0.3"),
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
        pbt, grid, replay = result["pbt"], result["grid"], result["replay"]
        members = _http("GET", f"{base}/v1/pbt/{pbt['id']}")[1]["members"]
        grid_runs = [_http("GET", f"{base}/v1/runs/{r}")[1] for r in grid["runs"]]
        replayed = _http("GET", f"{base}/v1/runs/{replay['id']}/curves")[1]["points"]
    finally:
        stop_process(up)

    for line in ("grid, best of 4 lrs", "PBT, best member (1 exploits)", "replayed from scratch", "mean over 1 seed"):
        assert line in out.stdout, out.stdout
    # the same compute: 4 members x 4 epochs against 4 grid cells x 4 epochs, the grid log-spaced over [1e-3, 1]
    assert [len(m["points"]) for m in members] == [4] * 4
    assert [r["summary"]["epochs_completed"] for r in grid_runs] == [4] * 4
    assert grid["lrs"] == [0.001, 0.01, 0.1, 1.0]
    # grid cell k as member k: seed 0 + k, everyone on the population's split (the replay too)
    assert [(r["spec"]["seed"], r["spec"]["split_seed"]) for r in grid_runs] == [(k, 0) for k in range(4)]
    assert [r["spec"]["optimizer"]["lr"] for r in grid_runs] == grid["lrs"]
    assert pbt["replay_spec"]["split_seed"] == 0
    assert all(1e-3 <= lr <= 1.0 for lr in pbt["initial_lrs"])
    # the replay trains the discovered lr per epoch, from the lineage's first member's starting weights and data
    lrs = [
        v
        for v, n in zip(pbt["schedule"]["values"], _spans(pbt["schedule"]["boundaries"], 4), strict=True)
        for _ in range(n)
    ]
    assert [p["lr"] for p in replayed] == pytest.approx(lrs)
    root, first = next(itertools.groupby(pbt["through"]))
    assert pbt["replay_spec"]["seed"] == root  # member k's seed is 0 + k
    ours = members[root]["points"][: len(list(first))]
    assert [p["val_accuracy"] for p in replayed[: len(ours)]] == [p["val_accuracy"] for p in ours]
    assert [p["train_loss"] for p in replayed[: len(ours)]] == pytest.approx([p["train_loss"] for p in ours], rel=1e-5)
    assert math.isclose(replay["final"], replayed[-1]["val_accuracy"])
    chart = tmp_path / "charts" / "pbt-spirals-sgd-seed0-val_accuracy.png"
    assert chart.read_bytes().startswith(b"\x89PNG")


def _spans(boundaries: list[int], epochs: int) -> list[int]:
    """Epochs each piecewise value lasts."""
    edges = [0, *boundaries, epochs]
    return [b - a for a, b in itertools.pairwise(edges)]
