"""The example plugin package (examples/lrlab-example-plugin) installed into the test environment.

.ci/run installs it with lrlab; a checkout set up by hand gets it here, once, at the first test that needs it
(an editable install, so the package's files are this checkout's).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lrlab-example-plugin"
DISTRIBUTION = "lrlab-example-plugin"


def ensure_example_plugin() -> None:
    try:
        importlib.metadata.distribution(DISTRIBUTION)
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(EXAMPLE)]
    # without build isolation when setuptools is here already (no download); with it otherwise
    done = subprocess.run([*install, "--no-build-isolation"], capture_output=True, text=True)
    if done.returncode != 0:
        done = subprocess.run(install, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"could not install {EXAMPLE}: {done.stderr[-2000:]}")
    site.addsitedir(sysconfig.get_paths()["purelib"])  # this process reads the editable install's .pth file
    importlib.invalidate_caches()
    importlib.metadata.distribution(DISTRIBUTION)


@pytest.fixture(scope="session")
def example_plugin() -> None:
    """The example plugin importable here and in every process started after this fixture."""
    ensure_example_plugin()
    from trainer.plugins import installed

    installed.cache_clear()
