"""Successive halving in the database: each run's report at a rung, and the decision made once for it.

The rule is lrlab.search.asha's; this module gives it its inputs and keeps its outputs. Runs that reach a rung
together (a fused group's members) are reported in one call and judged together; each is ranked with every
run of its cohort (the experiment's grid) that reported at that rung before. A run that comes back to a rung
it was judged at (it resumed from a checkpoint, or its pack was delivered again) gets the decision it had.

Decisions of one cohort take turns: on Postgres under a transaction-level advisory lock on the cohort, on
SQLite under the database's write lock, which the first insert takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from lrlab.db import session_scope
from lrlab.models import RungReport
from lrlab.schemas.search import EarlyStopping
from lrlab.search.asha import Mode, judge, rungs


def rungs_of(early_stopping: EarlyStopping, epochs: int) -> list[int]:
    return rungs(early_stopping.grace_epochs, early_stopping.reduction_factor, epochs)


def score_of(point: Mapping[str, float | None], early_stopping: EarlyStopping) -> float | None:
    """The metric a rung compares, from an epoch's point; None for a missing or non-finite value."""
    value = point.get(early_stopping.metric)
    return float(value) if value is not None and math.isfinite(value) else None


def _lock(session: Session, cohort: str) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:c))"), {"c": f"rung:{cohort}"})


def decide(
    cohort: str, rung: int, scores: Mapping[str, float | None], early_stopping: EarlyStopping
) -> dict[str, bool]:
    """Whether each run (run id -> its score at `rung`) goes on past `rung`, in its own transaction."""
    with session_scope() as session:
        return decide_in(session, cohort, rung, scores, early_stopping)


def decide_in(
    session: Session, cohort: str, rung: int, scores: Mapping[str, float | None], early_stopping: EarlyStopping
) -> dict[str, bool]:
    """decide() in the caller's transaction (which must commit for the decisions to hold)."""
    _lock(session, cohort)
    known = {
        r.run_id: r
        for r in session.scalars(select(RungReport).where(RungReport.run_id.in_(list(scores)), RungReport.rung == rung))
    }
    arriving = [run_id for run_id in scores if run_id not in known or known[run_id].continued is None]
    new = [RungReport(cohort=cohort, run_id=r, rung=rung, score=scores[r]) for r in arriving if r not in known]
    session.add_all(new)
    session.flush()  # on SQLite: the write lock, held to the commit
    earlier = session.scalars(
        select(RungReport.score)
        .where(
            RungReport.cohort == cohort,
            RungReport.rung == rung,
            RungReport.continued.is_not(None),
        )
        .order_by(RungReport.id)
    ).all()
    mode: Mode = "max" if early_stopping.metric == "val_accuracy" else "min"
    verdicts = judge(list(earlier), [scores[r] for r in arriving], early_stopping.reduction_factor, mode)
    rows = {**known, **{r.run_id: r for r in new}}
    for run_id, goes_on in zip(arriving, verdicts, strict=True):
        rows[run_id].continued = goes_on
    return {run_id: bool(rows[run_id].continued) for run_id in scores}


def reported(session: Session, cohort: str) -> int:
    """How many rung reports the cohort has (for tests and views)."""
    return session.scalar(select(func.count()).select_from(RungReport).where(RungReport.cohort == cohort)) or 0
