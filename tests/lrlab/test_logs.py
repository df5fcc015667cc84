"""JSON logs carry the run id of the work being done."""

from __future__ import annotations

import io
import json
import logging

from lrlab.logs import JsonFormatter, RunIdFilter, run_context


def test_json_log_lines_carry_run_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RunIdFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("lrlab.test-json")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    with run_context("run-123"):
        log.info("epoch %d done", 3)
    log.warning("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "epoch 3 done" and first["run_id"] == "run-123" and first["level"] == "INFO"
    assert "run_id" not in second and second["level"] == "WARNING"
