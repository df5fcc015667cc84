"""The `lrlab` client commands as a user meets them: one line on stderr and a non-zero exit for what goes wrong,
and ids alone on stdout from the submitting commands, against a real embedded `lrlab up`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http, _start

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("cli")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up = _start(["up", "--port", str(port)], tmp / "data", tmp / "up.log")
    try:
        wait_for(lambda: _http("GET", f"{url}/readyz")[0] == 200, 90, "lrlab up", interval=0.2)
        yield url
    finally:
        stop_process(up)


def lrlab(
    *args: str, url: str = "http://127.0.0.1:9", cwd: Path = ROOT, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LRLAB_")}
    return subprocess.run(
        [sys.executable, "-m", "lrlab.cli", *args],
        env={**base, "LRLAB_URL": url, "PYTHONPATH": str(ROOT), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(out: subprocess.CompletedProcess[str], code: int, *expected: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["watch", "nope"], "lrlab watch: error: 404 path.run_id: no run nope"),
        (["compare", "nope"], "lrlab compare: error: 404 path.experiment_id: no experiment nope"),
        (["pbt", "watch", "nope"], "lrlab pbt watch: error: 404 path.pbt_id: no population nope"),
        (["pbt", "schedule", "nope"], "lrlab pbt schedule: error: 404 path.pbt_id"),
        (["cancel", "nope"], "lrlab cancel: error: 404 path.run_id"),
        (["runs", "--status", "bogus"], "lrlab runs: error: 422 query.status: Input should be 'queued'"),
        (["submit", "--epochs", "0"], "lrlab submit: error: 422 body.epochs"),
    ],
)
def test_refusal_is_one_line(service: str, args: list[str], expected: str) -> None:
    assert_one_line_error(lrlab(*args, url=service), 2, expected)


@pytest.mark.parametrize("command", [["submit"], ["pbt", "submit"]])
def test_bad_spec_file_is_one_line(tmp_path: Path, command: list[str]) -> None:
    name = " ".join(command)
    assert_one_line_error(
        lrlab(*command, "missing.json", cwd=tmp_path), 2, f"lrlab {name}: error: missing.json: no such file"
    )
    (tmp_path / "bad.json").write_text('{"dataset": "digits",}')
    assert_one_line_error(
        lrlab(*command, "bad.json", cwd=tmp_path), 2, "bad.json is not valid JSON", "(line 1, column 22)"
    )
    (tmp_path / "list.json").write_text("[1, 2]")
    assert_one_line_error(lrlab(*command, "list.json", cwd=tmp_path), 2, "list.json must hold a JSON object")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    assert_one_line_error(lrlab(*command, "latin1.json", cwd=tmp_path), 2, "latin1.json: not UTF-8 text")


@pytest.mark.parametrize(
    "args", [["runs"], ["watch", "x"], ["compare", "x"], ["pbt", "watch", "x"], ["submit", "--epochs", "1"]]
)
def test_service_not_running_says_how_to_start_it(args: list[str]) -> None:
    port = _free_port()  # nothing listens there
    out = lrlab(*args, url=f"http://127.0.0.1:{port}")
    assert_one_line_error(out, 3, f"no lrlab API at http://127.0.0.1:{port}", "`lrlab up`", "LRLAB_URL")


def test_keys_with_the_database_away_is_one_line() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/nowhere"
    out = lrlab("keys", "list", LRLAB_DATABASE_URL=url)
    assert_one_line_error(out, 3, "lrlab keys list: error: the database at", "is unreachable")


def test_submitting_commands_print_the_id_alone(service: str, tmp_path: Path) -> None:
    run = lrlab("submit", "--dataset", "spirals", "--epochs", "1", url=service)
    assert run.returncode == 0, run.stderr
    assert UUID.fullmatch(run.stdout.strip()), run.stdout
    assert _http("GET", f"{service}/v1/runs/{run.stdout.strip()}")[0] == 200
    assert f"run {run.stdout.strip()} queued" in run.stderr

    waited = lrlab("submit", "--dataset", "spirals", "--epochs", "2", "--wait", url=service)
    assert waited.returncode == 0, waited.stderr
    assert UUID.fullmatch(waited.stdout.strip()), waited.stdout
    assert f"{waited.stdout.strip()} succeeded best_val_accuracy=" in waited.stderr

    grid = tmp_path / "grid.json"
    grid.write_text(
        json.dumps({"name": "g", "base": {"dataset": "spirals", "epochs": 1}, "grid": {"lr": [1e-3, 1e-2]}})
    )
    experiment = lrlab("submit", str(grid), url=service)
    assert experiment.returncode == 0, experiment.stderr
    assert _http("GET", f"{service}/v1/experiments/{experiment.stdout.strip()}")[0] == 200
    assert "2 runs" in experiment.stderr

    population = tmp_path / "population.json"
    population.write_text(
        json.dumps(
            {
                "base": {"dataset": "spirals"},
                "population": 2,
                "epochs": 1,
                "interval": 1,
                "mutations": {"lr": {"log_uniform": [1e-3, 1e-1]}},
            }
        )
    )
    pbt = lrlab("pbt", "submit", str(population), url=service)
    assert pbt.returncode == 0, pbt.stderr
    assert UUID.fullmatch(pbt.stdout.strip()), pbt.stdout
    assert _http("GET", f"{service}/v1/pbt/{pbt.stdout.strip()}")[0] == 200
    assert f"population {pbt.stdout.strip()}: 2 members" in pbt.stderr
