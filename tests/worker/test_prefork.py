"""A prefork worker (two children) trains runs side by side without the fork-after-torch deadlock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import live_workers, start_worker, stop_process, wait_for

pytestmark = pytest.mark.service


def test_prefork_worker_trains_concurrent_runs(service_env: dict[str, str], tmp_path: Any) -> None:
    log = tmp_path / "prefork.log"
    proc = start_worker(service_env, "--queues", "prefork", "--concurrency", "2", "--pool", "prefork", log=log)
    try:
        wait_for(lambda: live_workers("prefork") or proc.poll() is not None, 60, "prefork heartbeat")
        assert proc.poll() is None, log.read_text()
        from lrlab.db import session_scope
        from lrlab.models import Run
        from lrlab.runs import store
        from lrlab.schemas import RunSpec
        from tests.rows import send

        ids = []
        with session_scope() as s:
            for seed in range(4):
                ids.append(store.create_run(s, RunSpec(epochs=2, seed=seed), "prefork").id)
        assert send("runs", ids, "prefork") == ids

        def finished() -> list[Run] | None:
            with session_scope() as s:
                runs = [s.get(Run, r) for r in ids]
            return runs if all(r is not None and r.status not in ("queued", "running") for r in runs) else None

        runs = wait_for(finished, 90, "the four runs")
        assert [r.status for r in runs] == ["succeeded"] * 4, log.read_text()[-3000:]
        assert len({r.worker for r in runs}) == 1  # one worker process (its children share its hostname)
    finally:
        stop_process(proc)
