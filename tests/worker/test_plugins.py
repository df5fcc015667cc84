"""worker/plugins.py: discovery in a subprocess; one killed by the Ctrl-C that stops the worker is no error."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from worker import plugins, progress


@pytest.fixture
def interrupted_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery's interpreter dies of SIGINT, as when Ctrl-C reaches the worker's process group."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\nkill -INT $$\n")
    script.chmod(0o755)
    monkeypatch.setattr(plugins.sys, "executable", str(script))
    monkeypatch.setattr(plugins, "_advertisement", None)
    monkeypatch.setattr(plugins, "_done", threading.Event())
    monkeypatch.setattr(progress, "shutting_down", threading.Event())


@pytest.mark.usefixtures("interrupted_python")
@pytest.mark.parametrize("shutting_down", [True, False])
def test_discovery_killed_by_the_shutdown_is_quiet_and_offers_nothing(
    shutting_down: bool, caplog: pytest.LogCaptureFixture
) -> None:
    if shutting_down:
        progress.shutting_down.set()
    with caplog.at_level(logging.INFO, logger="worker.plugins"):
        plugins._discover()
    assert plugins.advertisement() == plugins.NOTHING
    (record,) = [r for r in caplog.records if r.name == "worker.plugins"]
    if shutting_down:
        assert (record.levelno, record.getMessage()) == (
            logging.INFO,
            "plugin discovery interrupted: the worker is shutting down",
        )
    else:  # a plugin environment that crashes the interpreter is a warning with the exit status
        assert record.levelno == logging.WARNING and "exit status -2" in str(record.exc_info[1])  # type: ignore[index]
