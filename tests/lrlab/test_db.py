"""No NaN or infinity ever reaches a JSON column: written as null, on Postgres and on SQLite alike.

(A sweep whose lr overflowed once wrote `Infinity` into lr_finder.result: Postgres refused the row, and the
worker failed the same way on every delivery.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lrlab.db import dumps_json, get_sessionmaker
from lrlab.migrate import upgrade
from lrlab.models import LrFinder, Pbt, PbtEvent, Run, utcnow
from lrlab.runs import store
from lrlab.schemas import RunSpec

NAN, INF = math.nan, math.inf


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgres":
        request.getfixturevalue("service_env")
        yield get_sessionmaker()
    else:
        url = f"sqlite:///{tmp_path / 'x.db'}"
        upgrade(url)
        yield get_sessionmaker(url)


def test_dumps_json_writes_null_for_every_nonfinite_number() -> None:
    value = {"a": [1.5, NAN, {"b": -INF}], "c": (INF, "inf"), "d": None}
    assert dumps_json(value) == '{"a": [1.5, null, {"b": null}], "c": [null, "inf"], "d": null}'
    assert value["a"][1] is NAN  # the caller's value is left as it was


def test_nonfinite_numbers_in_json_columns_are_stored_as_null(db: sessionmaker[Session]) -> None:
    with db() as session, session.begin():
        run = store.create_run(session, RunSpec(epochs=1), "nowhere")
        run.summary = {"final_val_loss": INF, "min_val_loss": NAN, "best_val_accuracy": 0.5}
        job = LrFinder(
            status="succeeded",
            spec={},
            queue="nowhere",
            created_at=utcnow(),
            result={"points": [{"step": 0, "lr": INF, "loss": NAN}], "suggested_lr": -INF, "suggested_grid": [1.0]},
        )
        pbt = Pbt(name="p", status="queued", execution="fused", spec={}, queue="nowhere", created_at=utcnow())
        session.add_all([job, pbt])
        session.flush()
        session.add(
            PbtEvent(pbt_id=pbt.id, epoch=1, target=0, source=1, old={"lr": NAN}, new={"lr": INF}, resampled=[])
        )
        ids = run.id, job.id, pbt.id
    with db() as session:
        assert_stored(session, *ids)


def assert_stored(session: Session, run_id: str, job_id: str, pbt_id: str) -> None:
    run, job = session.get(Run, run_id), session.get(LrFinder, job_id)
    assert run is not None and job is not None
    assert run.summary == {"final_val_loss": None, "min_val_loss": None, "best_val_accuracy": 0.5}
    assert job.result == {
        "points": [{"step": 0, "lr": None, "loss": None}],
        "suggested_lr": None,
        "suggested_grid": [1.0],
    }
    event = session.scalars(select(PbtEvent).where(PbtEvent.pbt_id == pbt_id)).one()
    assert (event.old, event.new) == ({"lr": None}, {"lr": None})


def test_postgres_connections_ask_the_server_to_probe_a_dead_peer(service_env: dict[str, str]) -> None:
    """A host cut off mid-transaction must not hold its row locks for hours: the server probes our connections."""
    from sqlalchemy import text

    from lrlab.db import get_engine

    with get_engine().connect() as conn:
        shown = {
            name: conn.execute(text(f"SHOW tcp_keepalives_{name}")).scalar() for name in ("idle", "interval", "count")
        }
    assert shown == {"idle": "30", "interval": "10", "count": "3"}


def test_threads_asking_for_the_engine_at_once_share_one_pool(service_env: dict[str, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lrlab import db

    db.reset_caches()
    with ThreadPoolExecutor(16) as pool:
        engines = set(map(id, pool.map(lambda _: db.get_engine(), range(64))))
    assert len(engines) == 1
