"""What this worker offers beyond the built-ins: the plugins installed here, learned once at start and sent with
every heartbeat (the API validates specs against what live workers advertise, and the catalog lists it).

Discovery imports each plugin's package, and with it torch, so it runs in a subprocess (`python -m
trainer.plugins`): the prefork pool's parent never imports torch. It starts with the worker and is usually done
before the first heartbeat; a heartbeat sent before it is done advertises nothing yet (NULL), the next one does.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from typing import Any

from worker import progress

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_SECONDS = 300.0  # importing torch and every plugin package on a loaded machine
NOTHING: dict[str, Any] = {"models": [], "datasets": [], "refused": []}

_advertisement: dict[str, Any] | None = None
_done = threading.Event()
_lock = threading.Lock()
_started = False


def start_discovery() -> None:
    """Learn the installed plugins in the background (once per process)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_discover, name="lrlab-plugins", daemon=True).start()


def advertisement(wait: float = 0.0) -> dict[str, Any] | None:
    """The advertisement (JSON), or None while discovery has not finished (after waiting up to `wait` seconds)."""
    _done.wait(wait)
    return _advertisement


def _discover() -> None:
    global _advertisement
    try:
        done = subprocess.run(
            [sys.executable, "-m", "trainer.plugins"],
            capture_output=True,
            text=True,
            timeout=DISCOVERY_TIMEOUT_SECONDS,
            check=False,
        )
        if done.returncode < 0 and progress.shutting_down.is_set():  # Ctrl-C reached its process group too
            log.info("plugin discovery interrupted: the worker is shutting down")
            found = NOTHING
        elif done.returncode != 0:
            raise RuntimeError(f"exit status {done.returncode}: {done.stderr.strip()[-2000:]}")
        else:
            found = json.loads(done.stdout)
    except Exception:  # a broken plugin environment must not stop the worker from training the built-ins
        log.warning("could not list the installed plugins; this worker offers none", exc_info=True)
        found = NOTHING
    for plugin in found.get("refused", []):
        log.warning(
            "refused %s plugin %r (%s %s, entry point %s): %s",
            plugin.get("kind"),
            plugin.get("name"),
            plugin.get("distribution"),
            plugin.get("version"),
            plugin.get("entry_point"),
            plugin.get("refused"),
        )
    for kind in ("models", "datasets"):
        for plugin in found.get(kind, []):
            log.info(
                "offering %s plugin %r from %s %s", kind[:-1], plugin["name"], plugin["distribution"], plugin["version"]
            )
    _advertisement = found
    _done.set()
