"""Schema changes only through Alembic: `lrlab db upgrade` and the embedded start call `upgrade()`.

lrlab keeps its revision in a version table of its own, `lrlab_alembic_version`: Optuna's RDB storage (the
searches' studies live in the same database) keeps its revision in Alembic's default `alembic_version`, and
two applications writing one version table read each other's revisions as unknown. Databases migrated before
the move hold lrlab's revision in `alembic_version`; `adopt_legacy_version` moves it over before migrating.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect, text

from lrlab.settings import get_settings

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "lrlab_alembic_version"
LEGACY_VERSION_TABLE = "alembic_version"  # Alembic's default name: lrlab's until the move, Optuna's since
# Any constant: two `lrlab db upgrade` at once (api replicas, a migrate job) take turns on Postgres.
MIGRATION_LOCK_KEY = 0x1A1AB0017


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def revision(message: str, url: str | None = None) -> None:
    """Autogenerate a migration against a database at head (a developer's tool)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)


def adopt_legacy_version(connection: Connection, revisions: set[str]) -> list[str]:
    """Move lrlab's revision rows from `alembic_version` into `lrlab_alembic_version`; return what moved.

    Runs in the migration's transaction, before Alembic reads its version table. Only rows naming one of
    lrlab's own `revisions` move, so an Optuna revision in `alembic_version` stays where Optuna looks for it.
    The legacy table is dropped once empty: Optuna creates it again (and stamps its own head) when it first
    opens the database; left holding lrlab's revision, Optuna would refuse the database as incompatible.
    """
    tables = set(inspect(connection).get_table_names())
    if LEGACY_VERSION_TABLE not in tables:
        return []
    legacy = connection.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).scalars().all()
    moving = sorted(v for v in legacy if v in revisions)
    if not moving:
        return []
    if VERSION_TABLE not in tables:
        # Alembic's own shape for a version table (alembic.runtime.migration: version_num varchar(32), pk).
        connection.execute(
            text(
                f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
                f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
            )
        )
    current = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if not current:  # a database already moved keeps its own row; a stale legacy copy is only removed
        for version in moving:
            connection.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:v)"), {"v": version})
    for version in moving:
        connection.execute(text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :v"), {"v": version})
    if len(moving) == len(legacy):
        connection.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
    return moving


@functools.cache
def foreign_tables() -> frozenset[str]:
    """Tables in lrlab's database that are not lrlab's: Optuna's storage. Autogenerate must never drop them."""
    from optuna.storages._rdb.models import BaseModel  # Optuna's table definitions (a private module, stable)

    return frozenset(BaseModel.metadata.tables) | {LEGACY_VERSION_TABLE}
