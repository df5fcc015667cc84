"""Population members on a worker: one member's interval (distributed), or a whole round fused in one pack.

Either way a member starts from its checkpoint in the checkpoint store (with the weights and optimizer state
of the member it copied, if the last round replaced it, and its new hyperparameters), trains to the next
round boundary under its own run's lease, writes its checkpoint there, and reports through
lrlab.pbt.rounds.reach, whose last caller decides the round and sends it (lrlab.outbox). A worker that dies
mid-interval leaves a lease that lapses: the reconciler queues the member again and it trains the interval again
from the same checkpoint (its points past the boundary were dropped by the claim), alone if need be.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict
from typing import Any

from sqlalchemy import select

import trainer
from lrlab import outbox
from lrlab.db import session_scope
from lrlab.models import Pbt, PbtMember, Run, new_id
from lrlab.pbt import rounds
from lrlab.pbt.checkpoints import CheckpointStore, get_checkpoint_store, member_key
from lrlab.runs import leases
from lrlab.schemas import RunStatus
from lrlab.schemas.pbt import PbtCreate
from lrlab.settings import get_settings
from lrlab.storage import StorageError
from worker import steps
from worker.progress import close_writer
from worker.uploads import materialize

log = logging.getLogger(__name__)


class _Place:
    """One claimed member: what it trains with, where it stops, and how far it got."""

    def __init__(self, claim: leases.Claim, member: PbtMember, request: PbtCreate, boundary: int) -> None:
        self.claim, self.request, self.boundary = claim, request, boundary
        self.pbt_id = member.pbt_id
        self.member, self.epoch, self.weights_from = member.member, member.epoch, member.weights_from
        self.hyperparameters = dict(member.hyperparameters)
        self.reached = member.epoch
        self.writer = steps.writer(claim)
        self.lost = False  # found not ours when it came to store its checkpoint

    def config(self) -> trainer.RunConfig:
        spec = self.request.member_spec(self.member, self.hyperparameters).to_json()
        return trainer.RunConfig.from_spec(materialize(spec))

    def start(self, store: CheckpointStore, pbt_id: str, device: Any) -> trainer.Checkpoint | None:
        """Its own checkpoint at `epoch`, with the weights and optimizer state of `weights_from`'s, and its
        current hyperparameters in the optimizer state (a trainer resuming takes them from there)."""
        if self.epoch == 0:
            return None
        own = trainer.checkpoint_from_bytes(store.get(member_key(pbt_id, self.member, self.epoch)), device)
        source = None
        if self.weights_from != self.member:  # exploit: the data order, curve and RNG stay the member's own
            source = trainer.checkpoint_from_bytes(store.get(member_key(pbt_id, self.weights_from, self.epoch)), device)
        return trainer.exploit(own, self.hyperparameters, source)

    def on_epoch(self, point: trainer.EpochPoint) -> None:
        self.writer.put_point(asdict(point))
        self.reached = point.epoch

    def should_stop(self) -> bool:
        # shutting down: stop after this epoch and hand the member back; it trains the interval again from its
        # boundary checkpoint, as after a lost worker (each epoch stored once)
        return self.lost or self.reached >= self.boundary or self.writer.should_stop() or self.writer.shutdown_due()

    def save(self, store: CheckpointStore, pbt_id: str, ckpt: trainer.Checkpoint) -> None:
        # before reach() records the epoch, so a member's recorded epoch always has its checkpoint stored; and only
        # while the member is ours, so a worker whose lease lapsed (cut off, then back) writes nothing in the store
        if not steps.lease_held(self.claim):
            self.lost = True
            log.warning("member run %s: lease lost before its checkpoint was stored; not stored", self.claim.run_id)
            return
        store.put(member_key(pbt_id, self.member, ckpt.epoch), trainer.checkpoint_to_bytes(ckpt))


def _places(pbt_id: str, claims: list[leases.Claim]) -> tuple[Pbt, list[_Place]]:
    with session_scope() as session:
        pbt = session.get(Pbt, pbt_id)
        assert pbt is not None
        session.expunge(pbt)
        request = rounds.request_of(pbt)
        by_run = {m.run_id: m for m in session.scalars(select(PbtMember).where(PbtMember.pbt_id == pbt_id))}
        places = []
        for claim in claims:
            member = by_run[claim.run_id]
            boundary = min(member.epoch + request.interval, request.epochs)
            places.append(_Place(claim, member, request, boundary))
    rounds.start(pbt_id)
    return pbt, places


def train_member(claim: leases.Claim) -> None:
    """One member's interval on its own (execution distributed, or a member the reconciler sent alone)."""
    assert claim.pbt_id is not None
    steps.set_threads()
    store = get_checkpoint_store()
    pbt, (place,) = _places(claim.pbt_id, [claim])
    try:
        device = trainer.resolve_device(claim.spec.get("device", "auto"))
        steps.set_device([claim.run_id], device, None)
        result = trainer.train(
            place.config(),
            device=device,
            data_root=get_settings().dataset_root,
            on_epoch=place.on_epoch,
            should_stop=place.should_stop,
            start=place.start(store, pbt.id, device),
            checkpoint_due=lambda epoch: epoch == place.boundary,
            on_checkpoint=functools.partial(place.save, store, pbt.id),
        )
    except StorageError as exc:
        steps.unreachable_storage(f"member run {claim.run_id}", [place.writer], exc)
        return
    except Exception as exc:
        _fail([place], exc)
        return
    _finish(place, result)


def train_round(pbt_id: str, worker: str) -> None:
    """A fused population's round: every queued member claimed here and trained as one stacked pack."""
    from trainer.population import train_population

    settings = get_settings()
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(Run.id).where(Run.pbt_id == pbt_id, Run.status == RunStatus.queued.value).order_by(Run.id)
            )
        )
    claims = steps.claim_queued(ids, worker)
    if not claims:
        log.info("population %s: no member is queued; nothing to train", pbt_id)
        return
    steps.set_threads()
    store = get_checkpoint_store()
    pbt, places = _places(pbt_id, claims)
    places.sort(key=lambda p: p.member)
    try:
        device = trainer.resolve_device(claims[0].spec.get("device", "auto"))
        steps.set_device([p.claim.run_id for p in places], device, new_id())
        log.info("population %s: %d members fused on %s to epoch %d", pbt_id, len(places), device, places[0].boundary)
        results = train_population(
            [p.config() for p in places],
            device=device,
            data_root=settings.dataset_root,
            on_epoch=lambda k, point: places[k].on_epoch(point),
            should_stop=lambda k: places[k].should_stop(),
            starts=[p.start(store, pbt.id, device) for p in places],
            checkpoint_due=lambda k, epoch: epoch == places[k].boundary,
            on_checkpoint=lambda k, ckpt: places[k].save(store, pbt.id, ckpt),
        )
    except StorageError as exc:
        steps.unreachable_storage(f"population {pbt_id}", [p.writer for p in places], exc)
        return
    except Exception as exc:
        _fail(places, exc)
        return
    for place, result in zip(places, results, strict=True):
        _finish(place, result)


def _fail(places: list[_Place], exc: Exception) -> None:
    log.exception("population member(s) failed: %s", ", ".join(p.claim.run_id for p in places))
    for place in places:
        close_writer(place.writer)
        # only where the failure is recorded: a member that is not ours any more is its new worker's to end
        if not place.writer.lost.is_set() and steps.record_failure(place.claim.run_id, place.claim.token, exc):
            rounds.end_member(place.claim.run_id)
            rounds.prune_checkpoints(place.pbt_id, get_checkpoint_store())


def _finish(place: _Place, result: trainer.TrainResult) -> None:
    run_id, token = place.claim.run_id, place.claim.token
    if not close_writer(place.writer) or place.writer.lost.is_set() or place.lost:
        log.warning("member run %s: progress not ours any more; its lease decides", run_id)
        return
    if place.reached < place.boundary and steps.handed_back(run_id, token, place.writer, result):
        return
    if place.reached < place.boundary:  # stopped on request before its boundary: cancelled
        if steps.record_run(run_id, token, functools.partial(steps.outcome, run_id, result)):
            rounds.end_member(run_id)
            rounds.prune_checkpoints(place.pbt_id, get_checkpoint_store())
        return
    last = place.boundary >= place.request.epochs
    recorded, next_round = rounds.reach(run_id, token, place.boundary, steps.outcome(run_id, result) if last else None)
    if not recorded:
        log.warning("member run %s: lease lost before its interval was recorded", run_id)
        return
    outbox.send(next_round)  # the round this member's arrival decided, if it did
    if last:  # the last member to end its last epoch finishes the population
        rounds.prune_checkpoints(place.pbt_id, get_checkpoint_store())
