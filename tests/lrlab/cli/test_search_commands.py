"""`lrlab search` and the client's searches against a real embedded `lrlab up` (SQLite database and transport):
the study is Optuna's, in the embedded database, and opens with optuna.load_study."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from lrlab.client import Client
from tests.conftest import stop_process, wait_for
from tests.e2e.test_embedded import _free_port, _http, _start
from tests.lrlab.cli.test_remote import UUID, lrlab


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("search-cli")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    up = _start(["up", "--port", str(port)], tmp / "data", tmp / "up.log")
    try:
        wait_for(lambda: _http("GET", f"{url}/readyz")[0] == 200, 90, "lrlab up", interval=0.2)
        yield url, tmp / "data" / "lrlab.db"
    finally:
        stop_process(up)


def test_search_submit_wait_list_and_the_study(embedded: tuple[str, Path], tmp_path: Path) -> None:
    url, database = embedded
    body = {
        "name": "cli search",
        "base": {"dataset": "spirals", "epochs": 2},
        "space": {"lr": {"log_uniform": [1e-3, 1e-1]}, "optimizer": {"choice": ["sgd", "adam"]}},
        "trials": 4,
        "parallel": 2,
    }
    spec = tmp_path / "search.json"
    spec.write_text(json.dumps(body))
    out = lrlab("search", "submit", str(spec), "--wait", "--poll", "0.2", url=url)
    assert out.returncode == 0, out.stderr
    search_id = out.stdout.splitlines()[0].strip()
    assert UUID.fullmatch(search_id), out.stdout
    assert "Optuna study lrlab-search-" in out.stderr and "4/4 trials told" in out.stderr
    assert sum(line.startswith("  trial ") for line in out.stdout.splitlines()) == 4

    listed = lrlab("search", "list", url=url)
    assert listed.returncode == 0 and search_id[:8] in listed.stdout

    found = Client(url).search(search_id)
    assert found.status == "succeeded" and len(found.trials) == 4 and found.best is not None
    study = optuna.load_study(study_name=found.study_name, storage=f"sqlite:///{database}")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in study.trials)

    again = lrlab("search", "cancel", search_id, url=url)
    assert again.returncode == 0 and f"{search_id} succeeded" in again.stdout  # finished: nothing to cancel


def test_search_refused_is_one_line(embedded: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = embedded
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"space": {"lr": {"log_uniform": [0, 1]}}}))
    out = lrlab("search", "submit", str(spec), url=url)
    assert out.returncode != 0 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1 and "space.lr" in out.stderr, out.stderr
