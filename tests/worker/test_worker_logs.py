"""A worker started with LRLAB_LOG_FORMAT=json writes one JSON object per line, each task's lines with its run id."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrlab.db import session_scope
from lrlab.models import Run
from lrlab.runs import store
from lrlab.schemas import RunSpec
from tests.conftest import start_worker, stop_process, wait_for
from tests.rows import send

pytestmark = pytest.mark.service


@pytest.fixture
def json_worker(service_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    proc: subprocess.Popen[bytes] = start_worker(
        {**service_env, "LRLAB_LOG_FORMAT": "json"}, "--queues", "jsonlogs", log=log
    )
    try:
        yield log
    finally:
        stop_process(proc)


def test_worker_json_logs_carry_the_run_id(json_worker: Path) -> None:
    with session_scope() as s:
        run_id = store.create_run(s, RunSpec(dataset="blobs", epochs=2), "jsonlogs").id
    assert send("runs", [run_id], "jsonlogs")

    def done() -> bool:
        with session_scope() as s:
            run = s.get(Run, run_id)
            return run is not None and run.status == "succeeded"

    wait_for(done, 60, "the run", interval=0.2)
    lines = [line for line in json_worker.read_text().splitlines() if line.strip()]
    # celery prints its banner after worker_init, where the warm-up (worker.app._warm_up) may have logged already
    banner_end = lines.index("[tasks]")
    first = next(i for i in range(banner_end, len(lines)) if lines[i].startswith("{"))  # after the task list
    entries = [json.loads(line) for line in lines[first:]]  # every line from there on is one JSON object
    entries += [json.loads(line) for line in lines[:banner_end] if line.startswith("{")]  # the warm-up's
    epochs = [e for e in entries if e["logger"] == "trainer.loop" and e["message"].startswith("epoch ")]
    assert len(epochs) == 2 and all(e.get("run_id") == run_id for e in epochs)
    assert any(e["logger"] == "celery.apps.worker" and "run_id" not in e for e in entries)  # outside any task
