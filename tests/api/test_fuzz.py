"""Schemathesis against /openapi.json: no 5xx for anything a caller can send, responses match the schema.

Runs on its own Redis db number with no worker consuming it, so the runs it creates are never trained; a
capped number of examples per operation keeps it short.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from sqlalchemy import update

from api.main import create_app
from tests.api.test_access import settings_env
from tests.conftest import make_key

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def fuzz_key(service_env: dict[str, str]) -> Iterator[str]:
    """A key of its own whose runs land on a broker db nothing consumes; they are cancelled afterwards."""
    from lrlab.db import session_scope
    from lrlab.models import Run

    key = make_key("fuzz")
    quiet = service_env["LRLAB_BROKER_URL"].rsplit("/", 1)[0] + "/0"
    with settings_env(LRLAB_BROKER_URL=quiet):
        yield key
    redis.Redis.from_url(quiet).delete("cpu", "gpu")
    with session_scope() as s:
        s.execute(update(Run).where(Run.status == "queued").values(status="cancelled"))


# The app reads its settings per request, so building it (and its schema) at import needs no services.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_500_and_conforms(case: Any, fuzz_key: str) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {fuzz_key}"}, checks=[not_a_server_error, response_schema_conformance]
    )
