"""Successive halving on a worker: which of the runs it trains stop at a rung.

The trainer asks `should_stop` after each epoch, member by member; the fused engine reports every member's
epoch (`on_point`) before it asks any of them, so the members of a group that reach a rung together are judged
together, by one decision (lrlab.search.rungs.decide). A run trained alone is judged on its own against the
runs of its cohort that reported before it. Decisions are kept in the database: a resumed run is stopped or
continued at a rung as it was the first time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from lrlab.db import session_scope
from lrlab.models import Experiment, Run, Search
from lrlab.schemas.search import EarlyStopping
from lrlab.search.rungs import decide, rungs_of, score_of
from worker.retry import through_outages

log = logging.getLogger(__name__)


class Halving:
    """The rungs of some runs of one cohort (an experiment, a search) and the decisions made for them."""

    def __init__(self, cohort: str, early_stopping: EarlyStopping, epochs: Mapping[str, int]) -> None:
        self.cohort, self.early_stopping = cohort, early_stopping
        self.rungs = {run_id: set(rungs_of(early_stopping, n)) for run_id, n in epochs.items()}
        self.last: dict[str, int] = {}  # run id -> its last reported epoch
        self.scores: dict[int, dict[str, float | None]] = {}  # rung -> run id -> score, awaiting a decision
        self.decided: dict[tuple[str, int], bool] = {}  # (run id, rung) -> goes on
        self.stopped: dict[str, int] = {}  # run id -> the rung it stopped at

    def on_point(self, run_id: str, point: Mapping[str, Any]) -> None:
        epoch = int(point["epoch"])
        self.last[run_id] = epoch
        if epoch in self.rungs.get(run_id, ()):
            self.scores.setdefault(epoch, {})[run_id] = score_of(point, self.early_stopping)

    def should_stop(self, run_id: str) -> bool:
        """Asked after the run's epoch: True when that epoch is a rung and the run is not among the top."""
        epoch = self.last.get(run_id)
        if epoch is None or epoch not in self.rungs.get(run_id, ()):
            return False
        if (run_id, epoch) not in self.decided:
            self._decide(epoch)
        goes_on = self.decided.get((run_id, epoch), True)
        if not goes_on:
            self.stopped[run_id] = epoch
        return not goes_on

    def _decide(self, rung: int) -> None:
        waiting = self.scores.pop(rung, {})
        if not waiting:
            return
        try:
            decided = through_outages(f"deciding rung {rung} of {self.cohort}")(
                decide, self.cohort, rung, waiting, self.early_stopping
            )
        except OperationalError:  # the database stayed away: the runs go on (a later rung judges them)
            log.error("%s: rung %d undecided (database unreachable); %d runs go on", self.cohort, rung, len(waiting))
            decided = dict.fromkeys(waiting, True)
        stopped = sorted(r for r, goes_on in decided.items() if not goes_on)
        log.info("%s: rung %d judged %d runs, %d stop", self.cohort, rung, len(decided), len(stopped))
        for run_id, goes_on in decided.items():
            self.decided[(run_id, rung)] = goes_on

    def stopped_at(self, run_id: str) -> int | None:
        return self.stopped.get(run_id)

    def at_rung(self, run_id: str, epoch: int) -> bool:
        """Whether `epoch` is one of the run's rungs. No checkpoint is taken there: one would be saved before
        the decision, and a run resumed from it would train past a rung where it had been stopped; resumed
        from an earlier one, it reaches the rung again and is given the decision it had."""
        return epoch in self.rungs.get(run_id, ())


def halving_for(run_ids: Sequence[str]) -> Halving | None:
    """The successive halving these runs are under (their experiment's or search's early_stopping), or None."""
    with session_scope() as session:
        rows = session.execute(
            select(Run.id, Run.spec, Run.experiment_id, Run.search_id).where(Run.id.in_(list(run_ids)))
        ).all()
        if not rows:
            return None
        first = rows[0]
        spec: dict[str, Any] | None = None
        if first.experiment_id is not None:
            spec = session.scalar(select(Experiment.early_stopping).where(Experiment.id == first.experiment_id))
            cohort = first.experiment_id
        elif first.search_id is not None:
            search_spec = session.scalar(select(Search.spec).where(Search.id == first.search_id))
            spec = (search_spec or {}).get("early_stopping")
            cohort = first.search_id
        if spec is None:
            return None
        epochs = {r.id: int(r.spec.get("epochs", 1)) for r in rows if (r.experiment_id or r.search_id) == cohort}
    return Halving(cohort, EarlyStopping.model_validate(spec), epochs)
