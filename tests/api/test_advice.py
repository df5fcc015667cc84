"""POST /v1/advice as the api sees it: owner-scoped, counted in the quota, refused whole. `device: cuda` keeps the
work on the gpu queue, which no worker of the test session serves: nothing trains here."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from lrlab import auth
from lrlab.db import session_scope
from lrlab.models import Advice, LrFinder
from lrlab.runs import quotas
from tests.conftest import make_key

pytestmark = pytest.mark.service

BASE = {"dataset": "digits", "epochs": 3, "device": "cuda"}


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def active(key: str) -> int:
    with session_scope() as s:
        owner = auth.owner_of(s, key)
        assert owner is not None
        return quotas.active(s, owner)


def test_other_owner_gets_404_and_never_sees_it(api_client: Any) -> None:
    mine = api_client.post("/v1/advice", json={"base": BASE, "optimizers": ["adam", "sgd"], "seeds": 2})
    assert mine.status_code == 202, mine.text
    assert mine.headers["location"] == f"/v1/advice/{mine.json()['id']}"
    other = headers(make_key("advice: someone else"))
    path = mine.headers["location"]
    assert api_client.get(path, headers=other).status_code == 404
    assert api_client.post(f"{path}/cancel", headers=other).status_code == 404
    assert api_client.get("/v1/advice", headers=other).json()["data"] == []
    assert api_client.get(path).json()["status"] == "queued"
    assert mine.json()["id"] in [a["id"] for a in api_client.get("/v1/advice").json()["data"]]
    assert api_client.post(f"{path}/cancel").json()["status"] == "cancelled"


def test_counted_in_the_quota_and_refused_whole(api_client: Any) -> None:
    key = make_key("advice quota")
    before = active(key)
    created = api_client.post("/v1/advice", json={"base": BASE}, headers=headers(key))
    assert created.status_code == 202
    assert active(key) == before + 6  # its six range tests, queued
    # every run the advice may train counts when it is asked for: 8 optimizers x 5 lrs + (3 finalists + 3 other
    # schedules) x 10 seeds = 100 runs and 8 range tests, past the 100 allowed at once
    big = {
        "base": BASE,
        "optimizers": [
            *("sgd", "rmsprop", "adam", "adagrad", "adadelta", "adamw"),
            {"name": "sgd"},
            {"name": "adam", "amsgrad": True},
        ],
        "seeds": 10,
        "schedules": [
            {"kind": "constant"},
            {"kind": "cosine"},
            {"kind": "step", "step_size": 1},
            {"kind": "exponential", "gamma": 0.9},
        ],
    }
    with session_scope() as s:
        advice_rows = s.scalar(select(func.count()).select_from(Advice))
        job_rows = s.scalar(select(func.count()).select_from(LrFinder))
    refused = api_client.post("/v1/advice", json=big, headers=headers(key))
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert "this request adds 108" in refused.json()["detail"][0]["msg"]
    with session_scope() as s:  # nothing written
        assert s.scalar(select(func.count()).select_from(Advice)) == advice_rows
        assert s.scalar(select(func.count()).select_from(LrFinder)) == job_rows
    api_client.post(f"/v1/advice/{created.json()['id']}/cancel", headers=headers(key))
    assert active(key) == before
