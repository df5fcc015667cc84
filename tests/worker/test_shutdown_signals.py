"""A second shutdown signal while the worker handles the first (Ctrl-C reaches the worker from the terminal and a
SIGTERM from `lrlab up`) must not hang it: signal handlers run on the main thread, nested wherever it stands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The first signal's handler is inside the children's Event.set, holding its lock, when the second arrives: a
# nested Event.set would wait for that lock forever. Real signals, Celery's own worker_shutting_down.
PROBE = """
import json, multiprocessing, os, signal
from celery import signals
import worker.app as app
from worker import progress

event = multiprocessing.get_context("fork").Event()
nested = []

class SecondSignalWhileSetting:
    def set(self):
        with event._cond:  # what Event.set holds while it wakes the waiters
            if not nested:
                nested.append(True)
                os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, on this thread
                for _ in range(10_000):
                    pass
        event.set()

app._children_shutting_down = SecondSignalWhileSetting()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, f: signals.worker_shutting_down.send(sender="probe", sig=s, how="Warm", exitcode=0))
os.kill(os.getpid(), signal.SIGTERM)
for _ in range(10_000):
    pass
print(json.dumps({"nested": nested, "children": event.is_set(), "here": progress.shutting_down.is_set()}))
"""


def test_a_second_shutdown_signal_inside_the_first_handler_does_not_hang_the_worker() -> None:
    try:
        out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("the worker hung in its shutdown signal handler") from exc
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"nested": [True], "children": True, "here": True}
