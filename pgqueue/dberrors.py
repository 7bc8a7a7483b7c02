"""Which database errors are worth another try, and how long to wait before it.

Two kinds of failure are safe to retry:

- the connection or the server went away, or could not be reached, *before* a statement
  was sent (connecting, a connection found closed): nothing ran;
- the server reported that the statement failed and was rolled back for a reason that
  may well not recur (a deadlock, a serialization failure, a lock or statement timeout):
  nothing was written, and the connection is still sound.

A connection lost while a statement was in flight is different: it may have committed
or not, and only an idempotent operation may simply be run again.
"""

from __future__ import annotations

import random
import select
from typing import Any

import asyncpg
import psycopg

from pgqueue.errors import SchemaNotReadyError

# asyncpg errors meaning the connection or the server went away (or never answered).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # The driver's own confusion about a connection an error left mid-operation: the
    # connection is gone (see pools.acquire), a new one will do.
    asyncpg.InternalClientError,
)

# Anything asyncpg raises about the database: the connection or server gone, or a
# statement the server refused. What a background loop (claims, the listener, pruning,
# progress reports) catches, logs and outlives.
# SchemaNotReadyError is what the executors make of the errors a missing schema gives.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    asyncpg.PostgresError,
    SchemaNotReadyError,
)

# SQLSTATEs after which the statement was rolled back on a sound connection, for a
# reason another try may not meet: deadlock_detected, serialization_failure,
# query_canceled (statement_timeout) and lock_not_available (lock_timeout).
RETRY_SAFE_SQLSTATES = frozenset({"40P01", "40001", "57014", "55P03"})

# SQLSTATEs of a server going down or not yet up (admin_shutdown, crash_shutdown,
# cannot_connect_now), out of connection slots (too_many_connections), or ending a
# session left idle in its transaction (idle_in_transaction_session_timeout, which
# pgqueue sets between a transactional task's completion and its COMMIT); the
# connection exception class (08) is matched by its prefix.
_SERVER_GONE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "25P03"})


def rolled_back(exc: BaseException) -> bool:
    """The server refused the statement and rolled it back, and trying again is
    reasonable: see :data:`RETRY_SAFE_SQLSTATES`."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, asyncpg.PostgresError | psycopg.Error) and (
        sqlstate in RETRY_SAFE_SQLSTATES
    )


def connection_failed(exc: BaseException) -> bool:
    """A lost or unreachable connection or server, from either driver (not a statement
    the server refused)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
        # psycopg raises OperationalError for some statement errors too (a deadlock, a
        # cancelled query): those carry their SQLSTATE, a lost connection has none.
        return True
    if not isinstance(exc, asyncpg.PostgresError | psycopg.Error) or not isinstance(sqlstate, str):
        return False
    return sqlstate.startswith("08") or sqlstate in _SERVER_GONE_SQLSTATES


# SQLSTATEs of a server refusing a connection for a reason that waiting will not fix:
# invalid_authorization_specification (an unknown role, a failed password: class 28)
# and invalid_catalog_name (an unknown database).
_REFUSED_SQLSTATE_PREFIXES = ("28", "3D")


def refused_for_good(exc: BaseException) -> bool:
    """The server refused the connection because of who or where: an unknown database
    or role, a failed authentication (asyncpg says which; psycopg does not)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, asyncpg.PostgresError | psycopg.Error)
        and isinstance(sqlstate, str)
        and sqlstate.startswith(_REFUSED_SQLSTATE_PREFIXES)
    )


def reconnect_delay(failures: int, rand: random.Random | None = None) -> float:
    """Backoff between reconnection attempts: 0.1 s doubling to 5 s, jittered over the
    upper half so that many clients coming back together do not retry in step."""
    ceiling = min(5.0, 0.1 * 2 ** min(failures, 10))
    return (rand or random).uniform(ceiling / 2, ceiling)


def looks_dead(fileno: int) -> bool:
    """Whether an idle connection's socket has something to read: the server closed it
    (end of file, usually after a FATAL message) or sent something unasked, which on
    pgqueue's own connections (no LISTEN) means the same. One non-blocking system call,
    so a connection the server dropped while it sat idle (a restart) is found before
    a statement is sent down it, when trying another connection is still safe. An
    unknown socket (-1) is not judged."""
    if fileno < 0:
        return False
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:  # the descriptor is gone
        return True


def asyncpg_fileno(conn: Any) -> int:
    """The socket of an asyncpg connection (or of a pool's proxy of one), -1 if it
    cannot be found (asyncpg offers no public accessor)."""
    raw = getattr(conn, "_con", None) or conn  # a PoolConnectionProxy wraps the connection
    transport = getattr(raw, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    fileno = getattr(sock, "fileno", None)
    return int(fileno()) if callable(fileno) else -1
