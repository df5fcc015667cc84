"""notify run changes: Postgres triggers NOTIFY lrlab_run for live progress streams

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite (the embedded default) has no NOTIFY: the api polls it instead (api/events.py).


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION lrlab_notify_point() RETURNS trigger AS $$
        BEGIN PERFORM pg_notify('lrlab_run', NEW.run_id); RETURN NEW; END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE FUNCTION lrlab_notify_status() RETURNS trigger AS $$
        BEGIN PERFORM pg_notify('lrlab_run', NEW.id); RETURN NEW; END $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER curve_point_notify AFTER INSERT OR UPDATE ON curve_point"
        " FOR EACH ROW EXECUTE FUNCTION lrlab_notify_point()"
    )
    op.execute(
        "CREATE TRIGGER run_status_notify AFTER UPDATE OF status ON run"
        " FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION lrlab_notify_status()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS run_status_notify ON run")
    op.execute("DROP TRIGGER IF EXISTS curve_point_notify ON curve_point")
    op.execute("DROP FUNCTION IF EXISTS lrlab_notify_status()")
    op.execute("DROP FUNCTION IF EXISTS lrlab_notify_point()")
