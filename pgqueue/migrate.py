"""Schema migrations: the Alembic chain in ``migrations/``, run without alembic.ini.

The chain's version table is ``pgqueue.alembic_version``, so it never meets an
application's own ``alembic_version``. Every run holds a PostgreSQL advisory lock on the
migrating connection: processes that migrate at the same time take turns, and the later
ones find nothing left to do.
"""

from __future__ import annotations

import io
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import alembic.util
import psycopg
import sqlalchemy as sa
import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.pool import NullPool

from pgqueue.connect import behind_pooler, connect_timeout
from pgqueue.locks import MIGRATION

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "MIGRATION_LOCK_KEY",
    "VERSION_TABLE_SCHEMA",
    "CannotConnectError",
    "MigrationError",
    "current_revision",
    "downgrade",
    "head_revision",
    "is_up_to_date",
    "make_engine",
    "script_location",
    "upgrade",
]

VERSION_TABLE_SCHEMA = "pgqueue"
# The key of the session-level advisory lock every migrator holds (pgqueue.locks).
MIGRATION_LOCK_KEY = MIGRATION.key

_log = structlog.get_logger("pgqueue.migrate")

_SQLALCHEMY_SCHEME = re.compile(r"^(?:postgres|postgresql)\+\w+://", re.IGNORECASE)


class MigrationError(Exception):
    """A migration could not be run: the database is unreachable, a revision is unknown,
    or a migration failed (and was rolled back)."""


class CannotConnectError(MigrationError):
    """No connection to the database could be made: unreachable, refused, no answer
    within the connect timeout, an unknown database or role, a failed authentication.
    ``server_refused``: the server itself answered with an error (libpq's "FATAL"),
    which may or may not last (a starting server, too many clients)."""

    def __init__(self, message: str, *, server_refused: bool = False) -> None:
        super().__init__(message)
        self.server_refused = server_refused


def script_location() -> Path:
    """The directory holding the Alembic chain (``env.py`` and ``versions/``)."""
    package_dir = Path(__file__).resolve().parent
    candidates = (
        package_dir / "_migrations",  # installed: shipped as package data
        package_dir.parent / "migrations",  # a source checkout
    )
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise MigrationError(
        "cannot find the pgqueue migration scripts; looked in "
        + ", ".join(str(c) for c in candidates)
    )


def _conninfo(dsn: str) -> str:
    """``dsn`` as libpq understands it, with pgqueue's connect timeout unless it sets one."""
    # Accept SQLAlchemy-style URLs too: libpq knows no "+driver" part in the scheme.
    dsn = _SQLALCHEMY_SCHEME.sub("postgresql://", dsn, count=1)
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise MigrationError(f"invalid DSN: {exc}") from exc
    if "connect_timeout" in params:
        return dsn
    return make_conninfo(dsn, connect_timeout=connect_timeout(dsn))


def _one_line(exc: BaseException | None) -> str:
    # libpq's messages run over several lines (a hint on the second).
    return " ".join(str(exc).split())


def _describe(dsn: str) -> str:
    """Where ``dsn`` points, for messages: never the password."""
    try:
        params = conninfo_to_dict(_SQLALCHEMY_SCHEME.sub("postgresql://", dsn, count=1))
    except psycopg.ProgrammingError:
        return "<invalid DSN>"
    host = params.get("host") or params.get("hostaddr") or "<default host>"
    port = params.get("port") or "<default port>"
    dbname = params.get("dbname") or "<default database>"
    return f"database {dbname} on {host} port {port}"


def make_engine(dsn: str) -> sa.Engine:
    """A SQLAlchemy engine (psycopg 3 driver, no pooling) for a libpq DSN or URL.

    Connections are opened by psycopg from the DSN itself, so every form libpq accepts
    works unchanged: ``postgresql://`` URLs (also ``postgresql://u@/db?host=/socket/dir``),
    ``postgresql+psycopg://`` URLs, and ``key=value`` strings. Behind a transaction
    pooler (:func:`pgqueue.connect.behind_pooler`) nothing is prepared: the migrations
    repeat statements (the version table's), which psycopg would prepare on one server
    connection and look for on another.
    """
    conninfo = _conninfo(dsn)
    prepare_threshold = None if behind_pooler(dsn) else 5  # psycopg's default: 5
    return sa.create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(conninfo, prepare_threshold=prepare_threshold),
        poolclass=NullPool,
    )


@contextmanager
def _connection(dsn: str) -> Iterator[sa.Connection]:
    engine = make_engine(dsn)
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as exc:
            message = _one_line(exc.orig)
            if "timeout expired" in message:
                seconds = connect_timeout(dsn)
                message += f" (no answer within the connect timeout, {seconds} s)"
            raise CannotConnectError(
                f"cannot connect to {_describe(dsn)}: {message}",
                server_refused="FATAL:" in message,
            ) from exc
        with connection:
            yield connection
    finally:
        engine.dispose()


def _config(connection: sa.Connection | None = None) -> Config:
    # Built in code: there is no alembic.ini, and alembic's fileConfig() would replace
    # the application's logging setup. Output alembic prints goes to a discarded buffer.
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    _quiet_alembic_logging()
    return config


def _quiet_alembic_logging() -> None:
    # pgqueue reports each migration step itself (structlog, from env.py); alembic's own
    # INFO lines would say the same again. A level the application chose is left alone.
    logger = logging.getLogger("alembic")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _run(action: str, dsn: str, revision: str) -> None:
    with _connection(dsn) as connection:
        config = _config(connection)
        try:
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
        except alembic.util.CommandError as exc:
            raise MigrationError(f"{action} to {revision!r} failed: {exc}") from exc
        except sa.exc.DBAPIError as exc:
            raise MigrationError(
                f"{action} to {revision!r} on {_describe(dsn)} failed"
                f" and was rolled back: {exc.orig}"
            ) from exc


def upgrade(dsn: str, revision: str = "head") -> None:
    """Upgrade the pgqueue schema in ``dsn`` to ``revision`` (all of it in one transaction)."""
    _run("upgrade", dsn, revision)


def downgrade(dsn: str, revision: str) -> None:
    """Downgrade the pgqueue schema in ``dsn`` to ``revision`` (``"base"``: remove it)."""
    _run("downgrade", dsn, revision)


def current_revision(dsn: str) -> str | None:
    """The revision ``dsn`` is at, or None if pgqueue was never migrated there."""
    with _connection(dsn) as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table_schema": VERSION_TABLE_SCHEMA}
        )
        try:
            return context.get_current_revision()
        except (alembic.util.CommandError, sa.exc.DBAPIError) as exc:
            raise MigrationError(f"cannot read the revision of {_describe(dsn)}: {exc}") from exc


def head_revision() -> str:
    """The newest revision of the chain shipped with this pgqueue."""
    script = ScriptDirectory.from_config(_config())
    try:
        head = script.get_current_head()
    except alembic.util.CommandError as exc:  # several heads: a broken chain
        raise MigrationError(f"the migration chain in {script.dir} is broken: {exc}") from exc
    if head is None:
        raise MigrationError(f"the migration chain in {script.dir} has no revisions")
    return head


def is_ahead(revision: str | None) -> bool:
    """Whether a database at ``revision`` is ahead of this pgqueue: at a revision its
    chain does not hold, which a later release's ``pgqueue migrate`` wrote. Its workers
    run on such a schema (migrations keep the previous release working: README,
    "Upgrading"), so a rolling deploy may restart them after the migration."""
    if revision is None:
        return False
    script = ScriptDirectory.from_config(_config())
    try:
        script.get_revision(revision)
    except alembic.util.CommandError:
        return True
    return False


def is_up_to_date(dsn: str) -> bool:
    """Whether ``dsn`` is at the head revision."""
    return current_revision(dsn) == head_revision()
