"""The article's example script, HTTP only, against an embedded `lrlab up`: three experiments, tables, charts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http, _start


def test_example_reproduces_the_article_experiments(tmp_path: Path) -> None:
    port = _free_port()
    up = _start(["up", "--port", str(port)], tmp_path / "data", tmp_path / "up.log")
    try:
        wait_for(lambda: _http("GET", f"http://127.0.0.1:{port}/healthz")[0] == 200, 60, "lrlab up", interval=0.3)
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "choosing_a_learning_rate.py"),
                "--url",
                f"http://127.0.0.1:{port}",
                "--dataset",
                "spirals",
                "--epochs",
                "3",
                "--out",
                str(tmp_path / "charts"),
                "--poll",
                "0.3",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        # without --out: a new temporary directory, named at the end; nothing in the working directory
        work, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
        work.mkdir()
        tmpdir.mkdir()
        default = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "choosing_a_learning_rate.py"),
                "--url",
                f"http://127.0.0.1:{port}",
            ]
            + ["--dataset", "blobs", "--epochs", "1", "--poll", "0.3"],
            cwd=work,
            env={**os.environ, "TMPDIR": str(tmpdir)},
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        stop_process(up)
    assert default.returncode == 0, default.stdout + default.stderr
    assert list(work.iterdir()) == []
    (made,) = tmpdir.iterdir()
    assert made.name.startswith("lrlab-charts-") and default.stdout.rstrip().endswith(f"charts in {made}")
    assert len(list(made.glob("blobs-*.png"))) == 7
    assert out.returncode == 0, out.stdout + out.stderr
    for title in ("Adam at three learning rates", "Five optimizers at lr 1e-3", "Step annealing"):
        assert title in out.stdout
    for label in ("lr=0.0001", "optimizer=adadelta", "schedule=multistep(milestones=[1, 2], gamma=0.1)"):
        assert label in out.stdout
    charts = sorted(p.name for p in (tmp_path / "charts").iterdir())
    assert charts == sorted(
        [f"spirals-{e}-{m}.png" for e in ("adam_lr", "optimizers", "annealing") for m in ("val_accuracy", "val_loss")]
        + ["spirals-annealing-lr.png"]
    )
    assert all((tmp_path / "charts" / c).read_bytes().startswith(b"\x89PNG") for c in charts)
