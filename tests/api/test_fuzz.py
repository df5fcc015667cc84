"""Schemathesis against /openapi.json: no 5xx for anything a caller can send, every status code documented,
responses match the schema.

Its runs go to a Redis db number of its own, claimed like the test run's (tests/conftest.py), that no worker
consumes, so they are never trained; afterwards its own queued work is cancelled (no one else's) and that db
is flushed and released. A capped number of examples per operation keeps it short.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance
from sqlalchemy import update

from api.main import create_app
from tests.api.test_access import settings_env
from tests.conftest import make_key, spare_redis_db

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def quiet_broker(redis_url: str) -> Iterator[str]:
    """A free Redis db number besides the run's own (tests/conftest.py)."""
    with spare_redis_db() as url:
        yield url


@pytest.fixture(scope="module")
def fuzz_key(service_env: dict[str, str], quiet_broker: str) -> Iterator[str]:
    """A key of its own whose work lands on the quiet broker; that work alone is cancelled afterwards."""
    from lrlab import auth
    from lrlab.db import session_scope
    from lrlab.models import LrFinder, Pbt, Run

    key = make_key("fuzz")
    with settings_env(LRLAB_BROKER_URL=quiet_broker):
        yield key
    with session_scope() as s:
        owner = auth.owner_of(s, key)
        for model in (Run, LrFinder, Pbt):
            active = model.status.in_(("queued", "running"))
            s.execute(update(model).where(model.owner == owner, active).values(status="cancelled"))


# The app reads its settings per request, so building it (and its schema) at import needs no services.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_500_and_conforms(case: Any, fuzz_key: str) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_key}"},
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
