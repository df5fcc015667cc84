"""The Optuna driver on real Postgres and SQLite, in a database lrlab has migrated: ask, report, tell once."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest

from lrlab.migrate import upgrade
from lrlab.schemas.search import SearchCreate
from lrlab.search import study as driver
from tests.conftest import PG_ADMIN_URL, sqlite_at_head

SPACE = {"lr": {"log_uniform": [1e-5, 1]}, "optimizer": {"choice": ["sgd", "adam", "rmsprop"]}}


@pytest.fixture(params=["postgres", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        found = sqlite_at_head(tmp_path / "lrlab.db")
        yield found
        driver.reset_storages()
        return
    request.getfixturevalue("services")
    name = f"lrlab_study_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    found = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    upgrade(found)
    yield found
    driver.reset_storages()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _request(**extra: object) -> SearchCreate:
    return SearchCreate.model_validate({"base": {"epochs": 3}, "space": SPACE, **extra})


def test_ask_returns_specs_in_the_space_and_optuna_opens_the_study(url: str) -> None:
    request = _request()
    driver.create(url, "s", request.direction)
    driver.create(url, "s", request.direction)  # a redelivered task: the same study
    asked = driver.ask(url, "s", request, 4)
    assert [a.trial.number for a in asked] == [0, 1, 2, 3]
    for a in asked:
        assert 1e-5 <= a.spec.optimizer.lr <= 1 and a.spec.optimizer.name in ("sgd", "adam", "rmsprop")
        assert a.spec.optimizer.lr == a.trial.params["lr"] and a.spec.epochs == 3
        assert driver.spec_of(request, a.trial) == a.spec
    # the study is Optuna's own, on lrlab's URL: load_study (and optuna-dashboard) sees every trial
    loaded = optuna.load_study(study_name="s", storage=url)
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.params for t in loaded.trials] == [a.trial.params for a in asked]
    assert [t.number for t in driver.running(url, "s")] == [0, 1, 2, 3]


def test_asks_in_later_batches_are_new_configurations(url: str) -> None:
    """A sampler is rebuilt for every batch: seeded from the count, it does not repeat the first batch."""
    request = _request(sampler="random")
    driver.create(url, "s", request.direction)
    first = [a.trial.params for a in driver.ask(url, "s", request, 3)]
    second = [a.trial.params for a in driver.ask(url, "s", request, 3)]
    assert not {p["lr"] for p in first} & {p["lr"] for p in second}


def test_report_and_tell_once(url: str) -> None:
    request = _request()
    driver.create(url, "s", request.direction)
    a, b, c, d = (x.trial.number for x in driver.ask(url, "s", request, 4))
    assert driver.report(url, "s", a, 1, 0.5)
    assert driver.report(url, "s", a, 1, 0.6)  # a redelivered epoch overwrites
    assert driver.report(url, "s", a, 2, None)  # a NaN loss: stored as NaN, Optuna's worst
    assert driver.tell(url, "s", a, "complete", 0.9)
    assert not driver.tell(url, "s", a, "complete", 0.1)  # told once: the second tell changes nothing
    assert not driver.report(url, "s", a, 3, 0.99)
    assert driver.report(url, "s", b, 1, 0.3) and driver.tell(url, "s", b, "pruned", None)
    assert driver.tell(url, "s", c, "complete", math.nan)  # a non-finite result is a failure
    by_number = {t.number: t for t in driver.trials(url, "s")}
    assert by_number[a].state == "complete" and by_number[a].value == 0.9
    assert by_number[a].intermediate[1] == 0.6 and math.isnan(by_number[a].intermediate[2])
    assert 3 not in by_number[a].intermediate
    assert (by_number[b].state, by_number[b].value) == ("pruned", 0.3)  # Optuna: the last reported value
    assert (by_number[c].state, by_number[c].value) == ("failed", None)
    assert [t.number for t in driver.running(url, "s")] == [d]
    best = driver.best(url, "s")
    assert best is not None and best.number == a


def _race(url: str, name: str, number: int, tellers: int) -> list[bool]:
    results: list[bool] = []
    barrier = threading.Barrier(tellers)

    def _tell(value: float) -> None:
        barrier.wait()
        results.append(driver.tell(url, name, number, "complete", value))

    threads = [threading.Thread(target=_tell, args=(0.1 * (i + 1),)) for i in range(tellers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_tell_races_one_winner(url: str) -> None:
    """Four tellers of one trial at once, five times over: exactly one tells it each time (on SQLite too)."""
    request = _request()
    for round_ in range(5):
        name = f"race-{round_}"
        driver.create(url, name, request.direction)
        (asked,) = driver.ask(url, name, request, 1)
        assert sorted(_race(url, name, asked.trial.number, 4)) == [False, False, False, True]
        (told,) = driver.trials(url, name)
        assert told.state == "complete" and told.value is not None


def test_best_and_importances(url: str) -> None:
    request = _request(sampler="random")
    driver.create(url, "s", request.direction)
    assert driver.best(url, "s") is None and driver.importances(url, "s") == {}
    # accuracy peaks at lr 1e-2 whatever the optimizer: lr matters, the optimizer barely
    for a in driver.ask(url, "s", request, 16):
        score = (
            1 - abs(math.log10(a.trial.params["lr"]) + 2) / 4 + (0.001 if a.trial.params["optimizer"] == "sgd" else 0)
        )
        driver.tell(url, "s", a.trial.number, "complete", score)
    importances = driver.importances(url, "s")
    assert set(importances) == {"lr", "optimizer"}
    assert importances["lr"] > importances["optimizer"]
    best = driver.best(url, "s")
    assert best is not None
    assert best.value == max(t.value for t in driver.trials(url, "s") if t.value is not None)


def test_tpe_concentrates_where_the_results_were_good(url: str) -> None:
    """Optuna's TPE, driven batch by batch as lrlab drives it, proposes lrs nearer the best than random does."""
    last: dict[str, float] = {}
    for sampler in ("tpe", "random"):
        request = _request(space={"lr": {"log_uniform": [1e-5, 1]}}, sampler=sampler, seed=3)
        driver.create(url, sampler, request.direction)
        distances: list[float] = []
        for _ in range(10):  # 10 batches of 3: TPE's first 10 trials are its random start-up
            for a in driver.ask(url, sampler, request, 3):
                distance = abs(math.log10(a.trial.params["lr"]) + 2)  # in decades from the best lr, 1e-2
                distances.append(distance)
                driver.tell(url, sampler, a.trial.number, "complete", -distance)
        last[sampler] = sum(distances[-10:]) / 10
    assert last["tpe"] < 0.7 * last["random"], last


def test_cmaes_asks_numbers(url: str) -> None:
    base = {"epochs": 3, "optimizer": {"name": "sgd"}}
    space = {"lr": {"log_uniform": [1e-4, 1]}, "optimizer.momentum": {"uniform": [0.0, 0.95]}}
    request = SearchCreate.model_validate({"base": base, "space": space, "sampler": "cmaes"})
    driver.create(url, "s", request.direction)
    for _ in range(4):
        for a in driver.ask(url, "s", request, 2):
            assert 0 <= a.spec.optimizer.momentum <= 0.95  # type: ignore[union-attr]
            driver.tell(url, "s", a.trial.number, "complete", -abs(a.spec.optimizer.momentum - 0.5))  # type: ignore[union-attr]
    assert len(driver.trials(url, "s")) == 8


def test_ask_tells_a_clashing_configuration_failed(url: str) -> None:
    """Two keys valid alone can clash (nesterov needs momentum > 0): that trial fails with its reason."""
    base = {"epochs": 3, "optimizer": {"name": "sgd", "momentum": 0.5}}
    space = {"optimizer.momentum": {"choice": [0.0, 0.9]}, "optimizer.nesterov": {"choice": [True]}}
    request = SearchCreate.model_validate({"base": base, "space": space, "sampler": "random"})
    driver.create(url, "s", request.direction)
    asked = driver.ask(url, "s", request, 3)
    assert len(asked) == 3 and all(a.spec.optimizer.momentum == 0.9 for a in asked)  # type: ignore[union-attr]
    loaded = optuna.load_study(study_name="s", storage=url)
    failed = [t for t in loaded.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and all("nesterov needs momentum" in t.user_attrs[driver.INVALID_ATTR] for t in failed)


@pytest.mark.service
def test_first_open_by_many_processes_at_once(services: None) -> None:
    """Optuna makes its tables on first open: api and worker doing it at once must not collide (Postgres enums)."""
    from tests.conftest import private_database

    with private_database() as fresh:
        errors: list[str] = []
        barrier = threading.Barrier(4)

        def _open() -> None:
            barrier.wait()
            try:
                driver._open(fresh).engine.dispose()
            except Exception as exc:  # noqa: BLE001 (reported below)
                errors.append(repr(exc))

        threads = [threading.Thread(target=_open) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
