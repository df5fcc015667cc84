"""Every message to the broker: stamped in the transaction that queues the work, sent once it has committed.

A row is the truth; a message only says that a run (or an lr-finder job) may be ready. Whoever queues work calls
one of the functions below inside its transaction: it stamps the rows' `dispatched_at` and returns the messages,
which `send` puts on the broker after the commit (a worker receiving one earlier could not read the row yet).
The stamp tells the reconciler that the work is on its way: a reconciler pass between the commit and the send
leaves it alone, so a fused pack or round is never split into separate runs by a pass that came too early.

A send that fails (the broker is away) clears the stamps of what it stood for. The reconciler
(lrlab.runs.reconciler), the outbox's other half, sends what carries no stamp and sends again what has waited
longer than LRLAB_REDISPATCH_SECONDS (a message the broker lost), by these same functions.

The messages: one run (TRAIN_RUN), a fused pack of an experiment's runs (TRAIN_PACK), a fused population's
round (TRAIN_PBT; sent member by member if it cannot be sent whole), one lr-finder job (FIND_LR), a search's next
step (ADVANCE_SEARCH: lrlab.search.driver.advance).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from lrlab import broker
from lrlab.db import session_scope
from lrlab.models import LrFinder, Run, Search, utcnow
from lrlab.runs.fusing import MAX_PACK_MEMBERS

log = logging.getLogger(__name__)


class Queued(Protocol):
    """A queued row: a Run or an LrFinder job (or anything naming one)."""

    @property
    def id(self) -> str: ...

    @property
    def queue(self) -> str: ...


class Target(NamedTuple):
    """A queued row named by its id and queue, for a caller that holds no ORM object."""

    id: str
    queue: str


@dataclass(frozen=True)
class Message:
    """One task to send, and the rows it stands for (stamped with `stamp`)."""

    task: str
    argument: str | list[str]  # the task's one argument: an id, or a pack's ids
    queue: str
    table: type[Run] | type[LrFinder] | type[Search]
    ids: tuple[str, ...]
    stamp: datetime
    member_by_member: bool = False  # a population's round that cannot be sent whole goes as one run per member


def runs(session: Session, queued: Sequence[Queued]) -> list[Message]:
    """One TRAIN_RUN per run, stamped now in the caller's transaction."""
    stamp = _stamp(session, Run, queued)
    return [Message(broker.TRAIN_RUN, r.id, r.queue, Run, (r.id,), stamp) for r in queued]


def experiment(session: Session, execution: str, queued: Sequence[Queued]) -> list[Message]:
    """An experiment's runs: in packs of at most MAX_PACK_MEMBERS per queue and model (a grid may vary the model:
    `model.params.width`; grid order kept) when it trains fused, else one message per run. A pack that cannot be
    sent leaves its runs to go one by one (a pack is an optimisation, never a requirement)."""
    if execution != "fused":
        return runs(session, queued)
    stamp = _stamp(session, Run, queued)
    by_queue: dict[tuple[str, str], list[str]] = {}
    for r in queued:
        spec = getattr(r, "spec", None) or {}
        model = json.dumps([spec.get("dataset"), spec.get("model")], sort_keys=True)
        by_queue.setdefault((r.queue, model), []).append(r.id)
    return [
        Message(broker.TRAIN_PACK, pack, queue_name, Run, tuple(pack), stamp)
        for (queue_name, _), ids in by_queue.items()
        for pack in (ids[i : i + MAX_PACK_MEMBERS] for i in range(0, len(ids), MAX_PACK_MEMBERS))
    ]


def population_round(
    session: Session, pbt_id: str, execution: str, queue: str, members: Sequence[Run | str]
) -> list[Message]:
    """A population's round (its member runs, or their ids): one TRAIN_PBT for a fused population (member by
    member if that cannot be sent), else one TRAIN_RUN per member."""
    stamp = _stamp(session, Run, members)
    ids = tuple(m if isinstance(m, str) else m.id for m in members)
    if execution == "fused":
        return [Message(broker.TRAIN_PBT, pbt_id, queue, Run, ids, stamp, member_by_member=True)]
    return [Message(broker.TRAIN_RUN, run_id, queue, Run, (run_id,), stamp) for run_id in ids]


def searches(session: Session, queued: Sequence[Queued]) -> list[Message]:
    """One ADVANCE_SEARCH per search (lrlab.search.driver.advance: tell, ask, queue the next trials)."""
    stamp = _stamp(session, Search, queued)
    return [Message(broker.ADVANCE_SEARCH, s.id, s.queue, Search, (s.id,), stamp) for s in queued]


def lr_finders(session: Session, queued: Sequence[Queued]) -> list[Message]:
    """One FIND_LR per lr-finder job."""
    stamp = _stamp(session, LrFinder, queued)
    return [Message(broker.FIND_LR, j.id, j.queue, LrFinder, (j.id,), stamp) for j in queued]


def send(messages: Iterable[Message], *, app: Celery | None = None) -> list[str]:
    """After the commit: send each message; never raises. Returns the ids of the rows whose message went.

    Stops at the first failure (the broker is away: no use waiting on it once per message); the stamps of
    what was not sent are cleared, for the reconciler.
    """
    todo = list(messages)
    client = app or broker.client()
    sent: list[str] = []
    while todo:
        message = todo.pop(0)
        try:
            client.send_task(message.task, args=[message.argument], queue=message.queue)
        except Exception as exc:  # kombu, redis and socket errors alike
            log.warning("could not send %s %s to %s: %s", message.task, message.argument, message.queue, exc)
            if message.member_by_member:  # the members go one by one, as the reconciler would send them
                todo[:0] = [Message(broker.TRAIN_RUN, i, message.queue, Run, (i,), message.stamp) for i in message.ids]
                continue
            _unstamp([message, *todo])
            break
        sent.extend(message.ids)
    return sent


def _stamp(
    session: Session, table: type[Run] | type[LrFinder] | type[Search], queued: Sequence[Queued | str]
) -> datetime:
    """`dispatched_at = now` for these rows: set on the ORM objects given, by UPDATE for rows named by id."""
    stamp = utcnow()
    ids = []
    for item in queued:
        if isinstance(item, table):
            item.dispatched_at = stamp
        else:
            ids.append(item if isinstance(item, str) else item.id)
    if ids:
        session.execute(update(table).where(table.id.in_(ids)).values(dispatched_at=stamp))
    return stamp


def _unstamp(unsent: Sequence[Message]) -> None:
    """Clear the stamps of unsent messages' rows, unless a newer stamp replaced them (a reconciler sent them)."""
    try:
        with session_scope() as session:
            for message in unsent:
                session.execute(
                    update(message.table)
                    .where(message.table.id.in_(message.ids), message.table.dispatched_at == message.stamp)
                    .values(dispatched_at=None)
                )
    except Exception:  # still stamped: the reconciler sends them after LRLAB_REDISPATCH_SECONDS instead
        log.warning("could not clear the stamps of %d unsent messages", len(unsent), exc_info=True)
    n = sum(len(m.ids) for m in unsent)
    log.warning("%d unsent (%d rows): left to the reconciler", len(unsent), n)
