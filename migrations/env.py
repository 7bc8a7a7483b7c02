"""Alembic environment for the pgqueue schema.

Run through ``pgqueue.migrate`` (or ``pgqueue migrate``), which hands over an open
connection in ``config.attributes["connection"]``. The plain ``alembic`` command works
too, given ``-x dsn=...`` or ``sqlalchemy.url``.
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from alembic import context

from pgqueue.migrate import MIGRATION_LOCK_KEY, VERSION_TABLE_SCHEMA, make_engine

log = structlog.get_logger("pgqueue.migrate")
config = context.config


def log_step(*, ctx, step, heads, run_args) -> None:  # noqa: ARG001 - alembic's callback signature
    log.info(
        "migration_applied",
        direction="upgrade" if step.is_upgrade else "downgrade",
        revision=step.up_revision_id,
        heads=sorted(heads),
    )


def take_migration_lock(connection: sa.Connection) -> None:
    """Wait for any other migrator of this database to finish. A transaction-level lock,
    released by the migration's own commit or rollback: a session-level one would
    outlive the transaction behind a transaction pooler (PgBouncer), on a server
    connection the next migrator may not get."""
    key = {"key": MIGRATION_LOCK_KEY}
    if connection.execute(sa.text("SELECT pg_try_advisory_xact_lock(:key)"), key).scalar_one():
        return
    log.info("migration_lock_waiting", lock_key=MIGRATION_LOCK_KEY)
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), key)


def ensure_version_schema(connection: sa.Connection) -> None:
    # Checked first so that a role without CREATE on the database can still run
    # migrations once the schema exists.
    exists = connection.execute(
        sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :name"),
        {"name": VERSION_TABLE_SCHEMA},
    ).first()
    if exists is None:
        connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {VERSION_TABLE_SCHEMA}"))


def run_migrations_online(connection: sa.Connection) -> None:
    # One transaction: the lock, the version table's schema, every migration.
    context.configure(
        connection=connection,
        version_table_schema=VERSION_TABLE_SCHEMA,
        transactional_ddl=True,
        on_version_apply=log_step,
    )
    with context.begin_transaction():
        take_migration_lock(connection)
        ensure_version_schema(connection)
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(
        dialect_name="postgresql",
        version_table_schema=VERSION_TABLE_SCHEMA,
        transactional_ddl=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {VERSION_TABLE_SCHEMA}")
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        run_migrations_offline()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations_online(connection)
        return
    dsn = context.get_x_argument(as_dictionary=True).get("dsn") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not dsn:
        raise SystemExit("pgqueue migrations: give a database with -x dsn=... or sqlalchemy.url")
    engine = make_engine(dsn)
    try:
        with engine.connect() as own_connection:
            run_migrations_online(own_connection)
    finally:
        engine.dispose()


main()
