"""/metrics: a fixed set of label values whatever callers send, live workers only, and LRLAB_METRICS_TOKEN."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from tests.api.test_access import settings_env

pytestmark = pytest.mark.service


def _label_sets(text: str) -> set[str]:
    """Every time series of the request histogram, as its label string."""
    return set(re.findall(r"^lrlab_http_request_seconds_count\{([^}]*)\}", text, re.MULTILINE))


def _http_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("lrlab_http_")]


def test_made_up_methods_and_paths_add_no_time_series(api_client: Any) -> None:
    def odd_requests(start: int, n: int) -> None:
        for i in range(start, start + n):
            api_client.request(f"M{i:05d}X", "/v1/runs")
            api_client.get(f"/no/such/path/{i}")
            api_client.get(f"/v1/runs/{uuid.uuid4()}")  # a route's ids never become labels
            api_client.get(f"/static/docs/{i}.js")  # a mount is labelled by its path

    odd_requests(0, 1)
    api_client.get("/metrics")
    before = api_client.get("/metrics").text
    odd_requests(1, 500)
    after = api_client.get("/metrics").text
    assert _label_sets(after) == _label_sets(before)
    # the request metrics' lines (the run and queue gauges follow other tests' work, which may still be moving)
    assert len(_http_lines(after)) == len(_http_lines(before))
    assert "M00" not in after and "/no/such" not in after
    assert 'method="other",route="/v1/runs",status="405"' in after
    assert 'route="unmatched",status="404"' in after and 'route="/v1/runs/{run_id}",status="404"' in after
    api_client.get("/static/docs/swagger-ui.css")
    assert 'method="GET",route="/static/docs",status="200"' in api_client.get("/metrics").text


def test_workers_count_live_heartbeats_only(api_client: Any) -> None:
    from lrlab.db import session_scope
    from lrlab.models import WorkerHeartbeat, utcnow

    def workers(text: str) -> dict[str, float]:
        return {gpu: float(n) for gpu, n in re.findall(r'^lrlab_workers\{gpu="(\w+)"\} (\S+)$', text, re.MULTILINE)}

    before = workers(api_client.get("/metrics").text)
    long_ago = utcnow() - timedelta(hours=1)
    ghosts = [f"killed-{uuid.uuid4().hex[:8]}@{gpu}" for gpu in ("gpu", "cpu")]
    with session_scope() as s:
        for name in ghosts:  # workers SIGKILLed an hour ago: their rows stay behind
            s.add(
                WorkerHeartbeat(
                    hostname=name, queues=name.split("@")[1], has_gpu=name.endswith("gpu"), last_seen_at=long_ago
                )
            )
    try:
        assert workers(api_client.get("/metrics").text) == before
    finally:
        with session_scope() as s:
            s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.hostname.in_(ghosts)))


def test_metrics_token_guards_metrics_only(api_client: Any) -> None:
    assert api_client.get("/metrics").status_code == 200  # unset: open, as before
    with settings_env(LRLAB_METRICS_TOKEN="scrape-secret"):
        missing = api_client.get("/metrics", headers={"Authorization": ""})
        assert missing.status_code == 401 and missing.json()["detail"][0]["loc"] == ["header", "authorization"]
        assert missing.headers["www-authenticate"] == "Bearer"
        key = api_client.get("/metrics")  # the client's own API key does not open it: totals span every owner
        assert key.status_code == 401 and "metrics token" in key.json()["detail"][0]["msg"]
        wrong = api_client.get("/metrics", headers={"Authorization": "Bearer scrape-secreT"})
        assert wrong.status_code == 401
        ok = api_client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and "lrlab_runs" in ok.text
        assert api_client.get("/v1/runs").status_code == 200  # the API keys still work everywhere else
