"""A prefork worker (two children) trains runs side by side without the fork-after-torch deadlock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import live_workers, start_worker, stop_process, wait_for, wait_run

pytestmark = pytest.mark.service


def test_prefork_worker_trains_concurrent_runs(api_client: Any, service_env: dict[str, str], tmp_path: Any) -> None:
    log = tmp_path / "prefork.log"
    proc = start_worker(service_env, "--queues", "prefork", "--concurrency", "2", "--pool", "prefork", log=log)
    try:
        wait_for(lambda: live_workers("prefork") or proc.poll() is not None, 60, "prefork heartbeat")
        assert proc.poll() is None, log.read_text()
        from lrlab import queue, store
        from lrlab.db import session_scope
        from lrlab.schemas import RunSpec

        ids = []
        with session_scope() as s:
            for seed in range(4):
                ids.append(store.create_run(s, RunSpec(epochs=2, seed=seed), "prefork").id)
        for run_id in ids:
            queue.enqueue_run(run_id, "prefork")
        workers = set()
        for run_id in ids:
            run = wait_run(api_client, run_id, timeout=90)
            assert run["status"] == "succeeded", (run, log.read_text()[-3000:])
        from lrlab.models import Run

        with session_scope() as s:
            workers = {s.get(Run, r).worker for r in ids}
        assert len(workers) == 1  # one worker process (its children share its hostname)
    finally:
        stop_process(proc)
