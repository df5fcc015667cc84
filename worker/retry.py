"""One retry policy for the worker's database work through an outage (tenacity): only OperationalError (the
database is briefly away: a restart, a failover, a dropped connection) is retried, with exponential backoff from
0.2 s to 5 s, each wait logged, for at most `seconds`; then the error is raised for the caller to decide (give
the run up to its lease, or fail it). Anything else is raised at once: it would fail the same way again."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = logging.getLogger(__name__)

# How long a write keeps trying through an outage before the caller decides; the leases outlast it.
OUTAGE_SECONDS = 60.0


def through_outages(
    what: str, seconds: float = OUTAGE_SECONDS, before_retry: Callable[[], None] | None = None
) -> Retrying:
    """`for attempt in through_outages(...): with attempt: ...`, or `through_outages(...)(fn)`.

    `before_retry` runs before each wait (e.g. drop a broken connection).
    """

    def before_sleep(state: RetryCallState) -> None:
        if before_retry is not None:
            before_retry()
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("%s failed, retrying in %.1fs: %s", what, wait, error)

    return Retrying(
        retry=retry_if_exception_type(OperationalError),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        stop=stop_after_delay(seconds),
        before_sleep=before_sleep,
        reraise=True,
    )
