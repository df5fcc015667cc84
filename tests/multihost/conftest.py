"""Multi-host tests: hosts are network namespaces (tests/cluster.py); they skip only where none can be made."""

from __future__ import annotations

import os

import pytest

from tests import cluster
from tests.storage_fixtures import moto_server

__all__ = ["moto_server", "netns"]


@pytest.fixture(scope="session")
def netns() -> None:
    """Skip, saying why, where this machine cannot make network namespaces (the only reason to skip, CI or not)."""
    if (reason := cluster.unavailable()) is not None:
        where = (
            " (CI=true: skipped only because namespaces are impossible on this machine)"
            if os.environ.get("CI") == "true"
            else ""
        )
        pytest.skip(f"multi-host tests need Linux network namespaces, which cannot be made here: {reason}{where}")
