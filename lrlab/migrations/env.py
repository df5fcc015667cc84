"""Alembic environment: migrates the database named by the settings (or by the Config's URL).

lrlab's revision lives in `lrlab_alembic_version` (lrlab.migrate says why); a database migrated before that
has it moved over first, in the same transaction as the migrations.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool, text

from lrlab.migrate import MIGRATION_LOCK_KEY, VERSION_TABLE, adopt_legacy_version, foreign_tables
from lrlab.models import Base
from lrlab.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().database_url


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    """Autogenerate looks at lrlab's tables only: Optuna's share the database and are not ours to drop."""
    return not (type_ == "table" and name in foreign_tables())


def run_migrations_offline() -> None:
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),
            compare_type=True,
            version_table=VERSION_TABLE,
            include_name=include_name,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            revisions = {script.revision for script in context.script.walk_revisions()}
            adopt_legacy_version(connection, revisions)
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
