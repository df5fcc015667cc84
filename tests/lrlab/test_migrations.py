"""The schema comes only from Alembic: an empty database migrates to head, down to base and up again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, inspect

from lrlab.migrate import alembic_config, upgrade
from lrlab.models import Base
from tests.conftest import PG_ADMIN_URL


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
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
