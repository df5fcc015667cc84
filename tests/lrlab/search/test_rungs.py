"""Successive halving in the database (real Postgres and SQLite): decisions made once, judged in report order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lrlab.db import get_sessionmaker
from lrlab.migrate import upgrade
from lrlab.models import RungReport
from lrlab.runs import store
from lrlab.schemas import RunSpec
from lrlab.schemas.search import EarlyStopping
from lrlab.search.asha import judge
from lrlab.search.rungs import decide_in
from tests.conftest import private_database, sqlite_at_head

ETA3 = EarlyStopping(grace_epochs=1, reduction_factor=3)


@pytest.fixture(params=["postgres", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        found = sqlite_at_head(tmp_path / "lrlab.db")
        yield found
        return
    request.getfixturevalue("services")
    with private_database() as found:
        upgrade(found)
        yield found


def _runs(url: str, n: int) -> list[str]:
    with get_sessionmaker(url)() as s, s.begin():
        return [store.create_run(s, RunSpec(epochs=9), "cpu").id for _ in range(n)]


def _decide(url: str, rung: int, scores: dict[str, float | None], es: EarlyStopping = ETA3) -> dict[str, bool]:
    with get_sessionmaker(url)() as s, s.begin():
        return decide_in(s, "cohort-1", rung, scores, es)


def test_pack_judged_together_keeps_top_third(url: str) -> None:
    ids = _runs(url, 9)
    scores = {r: 0.1 * i for i, r in enumerate(ids)}
    decided = _decide(url, 1, scores)
    assert {r for r, goes_on in decided.items() if goes_on} == set(ids[-3:])


def test_later_arrivals_ranked_with_earlier_reports(url: str) -> None:
    ids = _runs(url, 6)
    first = _decide(url, 1, {ids[0]: 0.9, ids[1]: 0.1, ids[2]: 0.2})  # 3 together: keep 1
    assert first == {ids[0]: True, ids[1]: False, ids[2]: False}
    second = _decide(url, 1, {ids[3]: 0.8, ids[4]: 0.3, ids[5]: 0.4})  # 6 reported in all: keep 2
    assert second == {ids[3]: True, ids[4]: False, ids[5]: False}
    assert _decide(url, 3, {ids[3]: 0.1}) == {ids[3]: True}  # another rung: its own reports


def test_decision_made_once(url: str) -> None:
    """A resumed run (or a redelivered pack) at a rung it was judged at gets the decision it had."""
    ids = _runs(url, 3)
    assert _decide(url, 1, {ids[0]: 0.5, ids[1]: 0.9, ids[2]: 0.1}) == {ids[0]: False, ids[1]: True, ids[2]: False}
    # scored differently the second time (it should not be: same seed), judged alone: still the first decision
    assert _decide(url, 1, {ids[0]: 0.99, ids[2]: 0.98}) == {ids[0]: False, ids[2]: False}
    with get_sessionmaker(url)() as s:
        assert len(s.scalars(select(RungReport)).all()) == 3


def test_loss_metric_lower_is_better_and_nan_last(url: str) -> None:
    ids = _runs(url, 4)
    es = EarlyStopping(metric="val_loss", reduction_factor=2)
    decided = _decide(url, 1, {ids[0]: 0.5, ids[1]: None, ids[2]: 0.2, ids[3]: 0.3}, es)
    assert decided == {ids[0]: False, ids[1]: False, ids[2]: True, ids[3]: True}


def test_concurrent_deciders_take_turns(url: str) -> None:
    """Eight runs reach a rung at once on eight threads: the decisions are those of the order they were made in."""
    ids = _runs(url, 8)
    scores = {r: 0.05 * ((i * 5) % 8) for i, r in enumerate(ids)}
    barrier = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def _one(run_id: str) -> None:
        barrier.wait()
        try:
            _decide(url, 1, {run_id: scores[run_id]})
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=_one, args=(r,)) for r in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with get_sessionmaker(url)() as s:
        rows = s.scalars(select(RungReport).order_by(RungReport.id)).all()
    replay = [judge([x.score for x in rows[:i]], [row.score], 3, "max")[0] for i, row in enumerate(rows)]
    assert [row.continued for row in rows] == replay
    assert rows[0].continued is True


def test_session_is_the_callers(url: str) -> None:
    """decide_in writes in the caller's transaction: rolled back, nothing was decided."""
    (run_id,) = _runs(url, 1)
    with get_sessionmaker(url)() as s:
        s.begin()
        decide_in(s, "cohort-1", 1, {run_id: 0.5}, ETA3)
        s.rollback()
    with Session(get_sessionmaker(url).kw["bind"]) as s:
        assert s.scalars(select(RungReport)).all() == []
