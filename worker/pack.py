"""A fused pack on a worker: several runs of one experiment trained as one stacked population.

Each member is still a run of its own: claimed under its own lease, its points written by its own progress
writer, its cancel honoured for it alone, its outcome recorded as if it had trained alone. A pack that can't
be fused (dropout, different datasets, a plugin's model that cannot be stacked) is sent back as separate runs,
through the outbox, each with the reason in not_fused_reason. Each member
checkpoints as a separate run does (trainer.train's format, into its own checkpoint row, as often as
LRLAB_CHECKPOINT_SECONDS allows): if the worker dies, the members' leases lapse, the reconciler requeues each
one, and whichever worker claims it resumes it from its own last checkpoint, alone or in a pack again (the pack
message is redelivered too).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from sqlalchemy import select

import trainer
from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import Run, new_id
from lrlab.runs import leases
from lrlab.schemas import RunStatus
from lrlab.search import driver as searches
from lrlab.settings import get_settings
from worker import steps
from worker.halving import halving_for
from worker.progress import close_writers
from worker.uploads import materialize

log = logging.getLogger(__name__)


def train_pack(run_ids: list[str], worker: str) -> None:
    """The pack's runs still queued, fused if the trainer can stack them, else sent on as separate runs."""
    configs = _queued_configs(run_ids)
    if not configs:
        return
    reason = _why_not_fused(list(configs.values()))
    if reason is not None:
        log.info("pack of %d runs is not fusable (%s): sending them separately", len(configs), reason)
        with session_scope() as session:
            queued = list(session.scalars(select(Run).where(Run.id.in_(configs), Run.status == RunStatus.queued.value)))
            for run in queued:
                run.not_fused_reason = reason  # each says why (the run page shows it)
            messages = outbox.runs(session, queued)
        outbox.send(messages)
        return
    claims = steps.claim_queued(list(configs), worker)
    if claims:
        _train(claims, [configs[c.run_id] for c in claims])


def _why_not_fused(configs: list[trainer.RunConfig]) -> str | None:
    """The trainer's rule; for a model the engine has no code of its own for (a layer list, a plugin's), two
    members built and tried stacked. A model or dataset that cannot be built at all is left to each run alone,
    which fails with the message."""
    try:
        return trainer.why_not_fusable(configs, try_stacking=True, data_root=get_settings().dataset_root)
    except Exception as exc:
        return f"its model could not be tried stacked: {type(exc).__name__}: {str(exc)[:1000]}"


def _queued_configs(run_ids: list[str]) -> dict[str, trainer.RunConfig]:
    """Each queued run's config, built once (a run's spec never changes), in the pack's order."""
    with session_scope() as session:
        specs = {
            r.id: dict(r.spec)
            for r in session.scalars(select(Run).where(Run.id.in_(run_ids), Run.status == RunStatus.queued.value))
        }
    return {r: trainer.RunConfig.from_spec(materialize(specs[r])) for r in run_ids if r in specs}


def _train(claims: list[leases.Claim], configs: list[trainer.RunConfig]) -> None:
    from trainer.population import train_population

    settings = get_settings()
    steps.set_threads()
    pack_id = new_id()
    device = trainer.resolve_device(claims[0].spec.get("device", "auto"))
    steps.set_device([c.run_id for c in claims], device, pack_id)
    writers = [steps.writer(c) for c in claims]
    log.info("pack %s: %d runs fused on %s", pack_id, len(claims), device)
    checkpointers = [
        steps.checkpointer(c.run_id, w, settings.checkpoint_seconds) for c, w in zip(claims, writers, strict=True)
    ]
    ids = [c.run_id for c in claims]
    halving = halving_for(ids)  # successive halving: the members at a rung are judged together (worker/halving.py)

    def on_epoch(k: int, point: trainer.EpochPoint) -> None:
        writers[k].put_point(asdict(point))
        if halving is not None:
            halving.on_point(ids[k], asdict(point))

    def should_stop(k: int) -> bool:
        return writers[k].should_stop() or (halving is not None and halving.should_stop(ids[k]))

    def checkpoint_due(k: int, epoch: int) -> bool:
        return not (halving is not None and halving.at_rung(ids[k], epoch)) and checkpointers[k][0](epoch)

    try:
        results = train_population(
            configs,
            device=device,
            data_root=settings.dataset_root,
            on_epoch=on_epoch,
            should_stop=should_stop,
            starts=[steps.resume_point(c, device, w) for c, w in zip(claims, writers, strict=True)],
            checkpoint_due=checkpoint_due,
            on_checkpoint=lambda k, ckpt: checkpointers[k][1](ckpt),
        )
    except Exception as exc:
        log.exception("pack %s failed", pack_id)
        close_writers(writers)
        for claim, writer in zip(claims, writers, strict=True):
            if not writer.lost.is_set():
                steps.record_failure(claim.run_id, claim.token, exc)
        searches.follow(ids)  # failed trials are told too: their search moves on now
        return
    # The members' last points, then their outcomes, each in one transaction for the whole pack.
    finished = []
    for claim, writer, result, closed in zip(claims, writers, results, close_writers(writers), strict=True):
        if not closed or writer.lost.is_set():
            log.warning("run %s of pack %s: progress not ours any more; its lease decides", claim.run_id, pack_id)
            continue
        if steps.handed_back(claim.run_id, claim.token, writer, result):  # each resumes alone, or in a new pack
            continue
        finished.append((claim, result, halving.stopped_at(claim.run_id) if halving is not None else None))
    if finished:
        steps.record_outcomes(finished)
    searches.follow(ids)  # a search's trials: tell them, ask the next batch
