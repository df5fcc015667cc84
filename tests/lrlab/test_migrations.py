"""The schema comes only from Alembic: an empty database migrates to head, down to base and up again.

lrlab's revision lives in its own version table, so Optuna's storage (which keeps its revision in Alembic's
default `alembic_version`) shares the database: a database from before the move upgrades in place.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, text

from lrlab.migrate import LEGACY_VERSION_TABLE, VERSION_TABLE, alembic_config, upgrade
from lrlab.models import Base
from tests.conftest import PG_ADMIN_URL, ROOT


@pytest.fixture
def empty_pg(services: None) -> Iterator[str]:
    name = f"lrlab_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _check_round_trip(url: str) -> None:
    from alembic import command

    upgrade(url)
    expected = set(Base.metadata.tables)
    assert expected <= _tables(url)
    command.downgrade(alembic_config(url), "base")
    assert not (expected & _tables(url))
    upgrade(url)
    assert expected <= _tables(url)


@pytest.mark.service
def test_migrate_empty_postgres_round_trip(empty_pg: str) -> None:
    _check_round_trip(empty_pg)


def test_migrate_empty_sqlite_round_trip(tmp_path: Path) -> None:
    _check_round_trip(f"sqlite:///{tmp_path / 'x.db'}")


@pytest.mark.service
def test_models_match_migrations(empty_pg: str) -> None:
    """Autogenerate against head finds nothing to do: models and migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    upgrade(empty_pg)
    engine = create_engine(empty_pg)
    with engine.connect() as conn:
        opts = {"compare_type": True, "version_table": VERSION_TABLE}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    engine.dispose()
    assert diff == []


def _rows(url: str, table: str) -> list[str] | None:
    """The revisions in a version table, or None when the table does not exist."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if table not in inspect(conn).get_table_names():
                return None
            return sorted(conn.execute(text(f"SELECT version_num FROM {table}")).scalars())
    finally:
        engine.dispose()


def _head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _make_legacy(url: str, revision: str) -> None:
    """A database as lrlab left it before the move: migrated to `revision`, its row in `alembic_version`."""
    upgrade(url, revision)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(text(f"CREATE TABLE {LEGACY_VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text(f"INSERT INTO {LEGACY_VERSION_TABLE} VALUES (:v)"), {"v": revision})
    engine.dispose()


def _check_legacy_upgrade_then_optuna(url: str) -> None:
    import optuna

    _make_legacy(url, "0008")
    upgrade(url)  # adopts 0008 and runs 0009 onwards: 0009's lease columns exist afterwards
    assert _rows(url, VERSION_TABLE) == [_head()]
    assert _rows(url, LEGACY_VERSION_TABLE) is None
    engine = create_engine(url)
    assert "lease_expires_at" in {c["name"] for c in inspect(engine).get_columns("lr_finder")}
    engine.dispose()

    # Optuna now creates its own tables and `alembic_version` (its head) in the same database, and accepts it.
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="shared", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    optuna_rows = _rows(url, LEGACY_VERSION_TABLE)
    assert optuna_rows is not None and optuna_rows[0].startswith("v")
    storage.engine.dispose()

    # Each keeps its own revision: lrlab upgrades, downgrades and upgrades again without touching Optuna's.
    upgrade(url)
    from alembic import command

    command.downgrade(alembic_config(url), "base")
    assert _rows(url, LEGACY_VERSION_TABLE) == optuna_rows
    upgrade(url)
    assert _rows(url, VERSION_TABLE) == [_head()]
    loaded = optuna.load_study(study_name="shared", storage=url)
    assert len(loaded.trials) == 2


@pytest.mark.service
def test_legacy_version_table_postgres_upgrades_and_shares_with_optuna(empty_pg: str) -> None:
    _check_legacy_upgrade_then_optuna(empty_pg)


def test_legacy_version_table_sqlite_upgrades_and_shares_with_optuna(tmp_path: Path) -> None:
    _check_legacy_upgrade_then_optuna(f"sqlite:///{tmp_path / 'x.db'}")


def test_optuna_first_then_lrlab_sqlite(tmp_path: Path) -> None:
    """Optuna's revision in `alembic_version` is not lrlab's: lrlab migrates from base and leaves it alone."""
    import optuna

    url = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="first", storage=url)
    optuna_rows = _rows(url, LEGACY_VERSION_TABLE)
    upgrade(url)
    assert _rows(url, VERSION_TABLE) == [_head()]
    assert _rows(url, LEGACY_VERSION_TABLE) == optuna_rows
    assert set(Base.metadata.tables) <= _tables(url)
    assert optuna.load_study(study_name="first", storage=url).study_name == "first"


@pytest.mark.service
def test_models_match_migrations_beside_optuna(empty_pg: str) -> None:
    """Autogenerate ignores Optuna's tables: a developer's new migration never drops them."""
    import optuna
    from alembic.autogenerate import produce_migrations
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    upgrade(empty_pg)
    optuna.storages.RDBStorage(empty_pg).engine.dispose()
    cfg = alembic_config(empty_pg)
    script = ScriptDirectory.from_config(cfg)
    ops: list[object] = []

    def _collect(rev: object, context: object) -> list[object]:
        ops.append(produce_migrations(context, Base.metadata))  # type: ignore[arg-type]
        return []

    with EnvironmentContext(cfg, script, fn=_collect, as_sql=False):
        script.run_env()  # lrlab's env.py, with its include_name and version table
    assert len(ops) == 1
    assert ops[0].upgrade_ops.is_empty(), ops[0].upgrade_ops.as_diffs()  # type: ignore[attr-defined]


@pytest.mark.service
def test_concurrent_upgrades_postgres_take_turns(empty_pg: str) -> None:
    """Two `lrlab db upgrade` at once on a database from before the move: both succeed, one row results."""
    _make_legacy(empty_pg, "0005")
    code = f"from lrlab.migrate import upgrade; upgrade({empty_pg!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert _rows(empty_pg, VERSION_TABLE) == [_head()]
    assert _rows(empty_pg, LEGACY_VERSION_TABLE) is None
