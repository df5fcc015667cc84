"""One lr range test on a worker, its job claimed under a lease: sweep, store the points and the suggestion.

As a run: the claim counts an attempt and takes a lease, which a thread renews while the sweep runs (and
through which a cancel request arrives: the sweep stops within STOP_POLL_EVERY steps). The result is written
only with the lease's token, so a worker presumed dead that comes back cannot overwrite the outcome of the
attempt that replaced it. A worker that dies, or a result it cannot write through a database outage, leaves the
lease to lapse: the reconciler requeues the job, and fails it after MAX_ATTEMPTS claims (lrlab.runs.reconciler).
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import asdict
from typing import Any

import trainer
from lrlab.runs import leases
from lrlab.schemas import RunStatus
from lrlab.schemas.experiments import LrFinderCreate
from lrlab.settings import get_settings
from trainer.lr_finder import STOPPED_ON_REQUEST
from worker import progress, steps
from worker.retry import through_outages
from worker.uploads import materialize

log = logging.getLogger(__name__)

# Most seconds between two renewals of the lease, which is also how often a cancel request is looked for.
RENEW_SECONDS = 1.0


class _Lease(threading.Thread):
    """Renews the job's lease while the sweep runs; says when the sweep should stop (cancelled, or not ours)."""

    def __init__(self, claim: leases.JobClaim, seconds: float) -> None:
        super().__init__(name=f"lease-{claim.job_id[:8]}", daemon=True)
        self.claim, self.seconds = claim, seconds
        self.cancelled, self.lost = threading.Event(), threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(min(RENEW_SECONDS, self.seconds / 3)):
            try:
                mine, cancel = leases.renew_lr_finder_lease(self.claim.job_id, self.claim.token, self.seconds)
            except Exception as exc:  # the database is briefly away: the next renewal tries again
                log.warning("lr-finder job %s: could not renew its lease: %s", self.claim.job_id, exc)
                continue
            if not mine:
                self.lost.set()
                return
            if cancel:
                self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or self.lost.is_set() or progress.shutting_down.is_set()

    def stop(self) -> None:
        self._done.set()
        self.join()


def sweep(claim: leases.JobClaim) -> None:
    """Run the lr range test this worker claimed (tasks.find_lr) and record what it found, or why it failed."""
    settings, job_id = get_settings(), claim.job_id
    lease = _Lease(claim, settings.lease_seconds)
    lease.start()
    values: dict[str, Any]
    try:
        request = LrFinderCreate.model_validate(claim.spec)
        result = trainer.lr_range_test(
            trainer.RunConfig.from_spec(materialize(request.run_spec())),
            min_lr=request.min_lr,
            max_lr=request.max_lr,
            steps=request.steps,
            smoothing=request.smoothing,
            stop_factor=request.stop_factor,
            device=trainer.resolve_device(request.device),
            data_root=settings.dataset_root,
            should_stop=lease.should_stop,
        )
    except Exception as exc:
        log.exception("lr-finder job %s failed", job_id)
        values = steps.failure(exc)
    else:
        values = {"status": RunStatus.succeeded.value, "result": asdict(result)}
    finally:
        lease.stop()
    if lease.lost.is_set():
        log.warning("lr-finder job %s is not ours any more; its result here is dropped", job_id)
        return
    if _handed_back(claim, values, cancelled=lease.cancelled.is_set()):
        return
    if record(claim, values):
        log.info("lr-finder job %s recorded (attempt %d)", job_id, claim.attempts)
        steps.advance_advice(job_id=job_id)


def _handed_back(claim: leases.JobClaim, values: dict[str, Any], *, cancelled: bool) -> bool:
    """True when the sweep was cut short because this worker is shutting down (not by a cancel, nor after it
    reached its end): the job is then queued again at once, for the next worker to sweep from the start, rather
    than recorded with a partial sweep or left to wait for its lease to lapse."""
    result = values.get("result") or {}
    if cancelled or not progress.shutting_down.is_set() or result.get("reason") != STOPPED_ON_REQUEST:
        return False
    released = through_outages(f"handing back lr-finder job {claim.job_id}")(
        lambda: leases.release_lr_finder(claim.job_id, claim.token)
    )
    log.info("lr-finder job %s handed back (%s): the worker is shutting down", claim.job_id, released)
    return True


def record(claim: leases.JobClaim, values: dict[str, Any]) -> bool:
    """Write the outcome while the lease is ours (steps.record: through an outage; failed if it can't be stored)."""
    finish = functools.partial(leases.finish_lr_finder, claim.job_id, claim.token)
    return steps.record(f"lr-finder job {claim.job_id}", finish, lambda: values)
