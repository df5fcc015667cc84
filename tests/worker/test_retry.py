"""worker/retry.py, the worker's one retry policy: a database outage is waited out with backoff, for a while;
anything else is raised at once."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.exc import OperationalError

from worker.retry import through_outages


def outage() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionError("server closed the connection unexpectedly"))


def test_an_outage_is_waited_out_with_growing_waits() -> None:
    calls: list[float] = []
    dropped: list[int] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise outage()
        return "written"

    assert through_outages("a write", 10, before_retry=lambda: dropped.append(1))(flaky) == "written"
    waits = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert len(waits) == 3 and dropped == [1, 1, 1]
    assert waits[0] >= 0.19 and waits[1] >= 0.39 and waits[2] >= 0.79  # 0.2 s, doubling


def test_an_outage_longer_than_the_limit_is_raised() -> None:
    start = time.monotonic()
    with pytest.raises(OperationalError):
        through_outages("a write", 0.5)(lambda: (_ for _ in ()).throw(outage()))
    assert time.monotonic() - start < 3


def test_other_errors_are_raised_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("cannot be stored")

    with pytest.raises(ValueError):
        through_outages("a write", 10)(broken)
    assert calls == [1]
