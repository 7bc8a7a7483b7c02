"""How pgqueue opens its connections: one short connect timeout for all of them.

Every connection pgqueue makes (the Queue's pools, a worker's pool, LISTEN connection,
heartbeat and transactional-task pools, migrations, the HTTP service, the ``pgqueue``
commands) gives up on an attempt after :func:`connect_timeout` seconds: the DSN's own
``connect_timeout`` if it has one, else ``$PGCONNECT_TIMEOUT`` (libpq's variable, which
asyncpg does not read by itself), else :data:`CONNECT_TIMEOUT`. A server that accepts
connections but never answers (a black-holed port, a frozen host) then fails one attempt
within seconds, and whatever retries it logs each failure, instead of waiting a driver's
default of a minute or more in silence.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "CONNECT_TIMEOUT",
    "ConnectTimeoutError",
    "asyncpg_connect",
    "asyncpg_pool",
    "connect_timeout",
    "psycopg_connect_args",
]

# Seconds one connection attempt may take. A local or same-region server answers in
# milliseconds; five seconds leaves room for a slow network and TLS.
CONNECT_TIMEOUT = 5
_ENV = "PGCONNECT_TIMEOUT"
_PARAM = "connect_timeout"


class ConnectTimeoutError(ConnectionError):
    """The server did not complete a new connection within the connect timeout. An
    ``OSError``, like a refused connection: nothing was sent, trying again is safe."""


def connect_timeout(dsn: str) -> int:
    """Seconds a connection attempt to ``dsn`` may take (0: the driver's own default).

    As in libpq: an integer, at least 2; 0 or less means no limit of pgqueue's own.
    An unreadable value falls back to :data:`CONNECT_TIMEOUT`.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # the driver will say what is wrong with the DSN
        params = {}
    raw = params.get(_PARAM)
    if raw is None:
        raw = os.environ.get(_ENV)
    if raw is None or str(raw).strip() == "":
        return CONNECT_TIMEOUT
    try:
        value = int(float(str(raw)))
    except ValueError:
        return CONNECT_TIMEOUT
    if value <= 0:
        return 0
    return max(value, 2)


def psycopg_connect_args(dsn: str) -> dict[str, Any]:
    """Keyword arguments giving a psycopg connection to ``dsn`` pgqueue's connect
    timeout (also for a psycopg_pool's ``kwargs``)."""
    return {_PARAM: connect_timeout(dsn)}


def _asyncpg_dsn(dsn: str) -> str:
    # asyncpg knows no connect_timeout parameter: it would send it to the server as a
    # setting, which refuses the connection. It becomes asyncpg's timeout argument.
    parts = urlsplit(dsn)
    if _PARAM not in parts.query:
        return dsn
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != _PARAM]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


# asyncpg's own default, for a connect timeout of 0.
_ASYNCPG_DEFAULT_TIMEOUT = 60.0


async def asyncpg_connect(dsn: str, **kwargs: Any) -> Any:
    """``asyncpg.connect`` with pgqueue's connect timeout; a timeout raises
    :class:`ConnectTimeoutError` (not a bare ``TimeoutError``, which a pool's
    ``acquire(timeout=...)`` also raises, for a different reason)."""
    timeout = float(connect_timeout(dsn) or _ASYNCPG_DEFAULT_TIMEOUT)
    try:
        return await asyncpg.connect(_asyncpg_dsn(dsn), timeout=timeout, **kwargs)
    except TimeoutError as exc:
        raise ConnectTimeoutError(
            f"no answer from PostgreSQL within the connect timeout ({timeout:g} s)"
        ) from exc


def asyncpg_pool(dsn: str, **kwargs: Any) -> asyncpg.Pool[Any]:
    """``asyncpg.create_pool`` whose connections are made by :func:`asyncpg_connect`.

    Not yet initialised: ``await`` it, as ``create_pool``'s result. Keeping the object
    lets a caller that gives up on the wait (a stop) terminate what was opened."""

    async def connect(*args: Any, **connect_kwargs: Any) -> Any:
        return await asyncpg_connect(*args, **connect_kwargs)

    pool: asyncpg.Pool[Any] = asyncpg.create_pool(dsn, connect=connect, **kwargs)
    return pool
