"""A fused pack on a worker: several runs of one experiment trained as one stacked population.

Each member is still a run of its own: claimed under its own lease, its points written by its own progress
writer, its cancel honoured for it alone, its outcome recorded as if it had trained alone. A pack that can't
be fused (dropout, different datasets) is handed back as separate runs. Each member checkpoints as a separate
run does (trainer.train's format, into its own checkpoint row, as often as LRLAB_CHECKPOINT_SECONDS allows):
if the worker dies, the members' leases lapse, the reconciler requeues each one, and whichever worker claims
it resumes it from its own last checkpoint, alone or in a pack again (the pack message is redelivered too).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict

from sqlalchemy import select, update

import trainer
from lrlab import leases
from lrlab.db import session_scope
from lrlab.models import Run, new_id
from lrlab.schemas import RunStatus
from lrlab.settings import get_settings
from worker.datasets import materialize
from worker.execute import _checkpointer, _record, _resume_point, _set_threads, handed_back, outcome
from worker.progress import ProgressWriter, close_writer

log = logging.getLogger(__name__)


def execute_pack(run_ids: list[str], worker: str) -> None:
    from trainer.population import train_population, why_not_fusable

    settings = get_settings()
    with session_scope() as session:
        rows = {
            r.id: (r.status, dict(r.spec), r.queue) for r in session.scalars(select(Run).where(Run.id.in_(run_ids)))
        }
    queued = [r for r in run_ids if r in rows and rows[r][0] == RunStatus.queued.value]
    if not queued:
        return
    configs = {r: trainer.RunConfig.from_spec(materialize(rows[r][1])) for r in queued}  # a run's spec never changes
    reason = why_not_fusable(list(configs.values()))
    if reason is not None:
        log.info("pack of %d runs is not fusable (%s): sending them separately", len(queued), reason)
        leases.dispatch_runs([(r, rows[r][2]) for r in queued])
        return

    claims = [c for r in queued if (c := leases.claim_run(r, worker, lease_seconds=settings.lease_seconds))]
    if not claims:
        return
    _set_threads()
    pack_id = new_id()
    device = trainer.resolve_device(claims[0].spec.get("device", "auto"))
    with session_scope() as session:
        ids = [c.run_id for c in claims]
        session.execute(update(Run).where(Run.id.in_(ids)).values(pack_id=pack_id, device=str(device)))
    writers = [
        ProgressWriter(
            c.run_id,
            lease_token=c.token,
            lease_seconds=settings.lease_seconds,
            flush_seconds=settings.progress_flush_seconds,
        )
        for c in claims
    ]
    log.info("pack %s: %d runs fused on %s", pack_id, len(claims), device)
    checkpointers = [
        _checkpointer(c.run_id, w, settings.checkpoint_seconds) for c, w in zip(claims, writers, strict=True)
    ]
    try:
        results = train_population(
            [configs[c.run_id] for c in claims],
            device=device,
            data_root=settings.dataset_root,
            on_epoch=lambda k, point: writers[k].put_point(asdict(point)),
            should_stop=lambda k: writers[k].should_stop(),
            starts=[_resume_point(c, device, w) for c, w in zip(claims, writers, strict=True)],
            checkpoint_due=lambda k, epoch: checkpointers[k][0](epoch),
            on_checkpoint=lambda k, ckpt: checkpointers[k][1](ckpt),
        )
    except Exception as exc:
        log.exception("pack %s failed", pack_id)
        error = f"{type(exc).__name__}: {exc}"[:4000]
        for claim, writer in zip(claims, writers, strict=True):
            close_writer(writer)
            if not writer.lost.is_set():
                _record(claim.run_id, claim.token, lambda: {"status": RunStatus.failed.value, "error": error})
        return
    for claim, writer, result in zip(claims, writers, results, strict=True):
        if not close_writer(writer) or writer.lost.is_set():
            log.warning("run %s of pack %s: progress not ours any more; its lease decides", claim.run_id, pack_id)
            continue
        if handed_back(claim.run_id, claim.token, writer, result):  # each resumes on its own, or in a new pack
            continue
        _record(claim.run_id, claim.token, functools.partial(outcome, claim.run_id, result))
