"""How pgqueue opens its connections: one short connect timeout for all of them.

Every connection pgqueue makes (the Queue's pools, a worker's pool, LISTEN connection,
heartbeat and transactional-task pools, migrations, the HTTP service, the ``pgqueue``
commands) gives up on an attempt after :func:`connect_timeout` seconds: the DSN's own
``connect_timeout`` if it has one, else ``$PGCONNECT_TIMEOUT`` (libpq's variable, which
asyncpg does not read by itself), else :data:`CONNECT_TIMEOUT`. A server that accepts
connections but never answers (a black-holed port, a frozen host) then fails one attempt
within seconds, and whatever retries it logs each failure, instead of waiting a driver's
default of a minute or more in silence.

Behind a transaction pooler (PgBouncer in ``pool_mode = transaction``, and the like),
each transaction may run on another server connection, so nothing may outlive a
transaction: no prepared statement, no LISTEN, no session lock. A DSN is declared to be
such a pooler by ``PGQUEUE_POOLER=1`` (``--pooler`` on the commands: every DSN of the
process) or :func:`declare_pooler` (that DSN only). Connections to it are then opened
without prepared statements (psycopg ``prepare_threshold=None``, asyncpg
``statement_cache_size=0``), and LISTEN goes to the direct DSN :func:`listen_dsn` gives
(``PGQUEUE_LISTEN_DSN``, ``--listen-dsn``), or nowhere: the listeners then poll.
A direct DSN, the default, keeps prepared statements.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgqueue.dberrors import refused_for_good

__all__ = [
    "CONNECT_TIMEOUT",
    "LISTEN_DSN_ENV",
    "POOLER_ENV",
    "ConnectTimeoutError",
    "asyncpg_connect",
    "asyncpg_connect_args",
    "asyncpg_pool",
    "behind_pooler",
    "connect_timeout",
    "declare_pooler",
    "listen_dsn",
    "psycopg_connect_args",
]

# Seconds one connection attempt may take. A local or same-region server answers in
# milliseconds; five seconds leaves room for a slow network and TLS.
CONNECT_TIMEOUT = 5
_ENV = "PGCONNECT_TIMEOUT"
_PARAM = "connect_timeout"
# Set to 1 (true, yes, on): the process's DSNs lead to a transaction pooler.
POOLER_ENV = "PGQUEUE_POOLER"
# A direct DSN (not through the pooler) for the connections that LISTEN.
LISTEN_DSN_ENV = "PGQUEUE_LISTEN_DSN"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
# DSNs declared in code to lead to a pooler, with the direct DSN to LISTEN on (or None).
_declared: dict[str, str | None] = {}


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


def declare_pooler(dsn: str, *, listen_dsn: str | None = None) -> None:
    """Declare that ``dsn`` leads to a transaction pooler (PgBouncer's
    ``pool_mode = transaction``): every connection pgqueue opens to it goes without
    prepared statements, and LISTEN goes to ``listen_dsn``, a direct connection to the
    same database (None: nowhere, the listeners poll). For this DSN only; the same as
    ``PGQUEUE_POOLER=1`` (and ``PGQUEUE_LISTEN_DSN``) for every DSN of the process."""
    _declared[dsn] = listen_dsn


def _env_pooler() -> bool:
    raw = os.environ.get(POOLER_ENV, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw not in _FALSE:
        raise ValueError(f"{POOLER_ENV}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)")
    return False


def behind_pooler(dsn: str) -> bool:
    """Whether ``dsn`` leads to a transaction pooler (see the module's docstring)."""
    return dsn in _declared or _env_pooler()


def listen_dsn(dsn: str) -> str | None:
    """The DSN to LISTEN on for notifications sent in the database of ``dsn``: the
    direct DSN declared with it or ``PGQUEUE_LISTEN_DSN``; else ``dsn`` itself, unless
    it leads to a transaction pooler, where a LISTEN would be lost with the server
    connection it ran on: then None (poll instead)."""
    declared = _declared.get(dsn)
    if declared:
        return declared
    env = os.environ.get(LISTEN_DSN_ENV, "").strip()
    if env:
        return env
    return None if behind_pooler(dsn) else dsn


def psycopg_connect_args(dsn: str) -> dict[str, Any]:
    """Keyword arguments giving a psycopg connection to ``dsn`` pgqueue's connect
    timeout (also for a psycopg_pool's ``kwargs``), and no prepared statements behind a
    transaction pooler: psycopg prepares a statement on its fifth run, on whichever
    server connection that transaction had, and a later run finds another one
    (``prepared statement "_pg3_0" does not exist``)."""
    args: dict[str, Any] = {_PARAM: connect_timeout(dsn)}
    if behind_pooler(dsn):
        args["prepare_threshold"] = None
    return args


def asyncpg_connect_args(dsn: str) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect`` to ``dsn``: behind a transaction
    pooler, no statement cache (asyncpg's cached statements are named server-side
    prepared statements, as psycopg's above)."""
    return {"statement_cache_size": 0} if behind_pooler(dsn) else {}


_URL_SCHEMES = ("postgresql://", "postgres://")


def _asyncpg_dsn(dsn: str) -> str:
    # asyncpg reads URLs only: libpq's key=value form ("host=a,b port=5432,5433
    # target_session_attrs=read-write", which psycopg reads) becomes a URL whose query
    # holds the same parameters (asyncpg reads host, port, dbname, user, ... there too).
    if "=" in dsn and not dsn.lstrip().lower().startswith(_URL_SCHEMES):
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:  # asyncpg will say what is wrong with it
            return dsn
        query = [(k, str(v)) for k, v in params.items() if k != _PARAM and v is not None]
        return "postgresql://?" + urlencode(query, quote_via=quote)
    # asyncpg knows no connect_timeout parameter: it would send it to the server as a
    # setting, which refuses the connection. It becomes asyncpg's timeout argument.
    parts = urlsplit(dsn)
    if _PARAM not in parts.query:
        return dsn
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != _PARAM]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


# asyncpg's own default, for a connect timeout of 0.
_ASYNCPG_DEFAULT_TIMEOUT = 60.0


def _one_dsn_per_host(dsn: str) -> list[str]:
    """A multi-host DSN (``postgresql://u@a:5432,b:5432/db``, ``host=a,b``) as one DSN
    per host, in order; any other DSN as itself.

    libpq tries the hosts in turn, each within the connect timeout. asyncpg's timeout
    covers them all: a first host that never answers (the old primary's machine gone,
    after a failover) would use it up, every time, and the next host, the new primary,
    would never be tried. So pgqueue tries them in turn, as libpq does."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return [dsn]
    hosts = str(params.get("host") or "").split(",")
    if len(hosts) < 2 or params.get("hostaddr"):
        return [dsn]
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):  # asyncpg will say what is wrong with it
        return [dsn]
    one_each = []
    for host, port in zip(hosts, ports, strict=True):
        single = {**params, "host": host, "port": port}
        query = [(k, str(v)) for k, v in single.items() if k != _PARAM and v not in (None, "")]
        one_each.append("postgresql://?" + urlencode(query, quote_via=quote))
    return one_each


async def asyncpg_connect(dsn: str, **kwargs: Any) -> Any:
    """``asyncpg.connect`` with pgqueue's connect timeout; a timeout raises
    :class:`ConnectTimeoutError` (not a bare ``TimeoutError``, which a pool's
    ``acquire(timeout=...)`` also raises, for a different reason). The hosts of a
    multi-host DSN are tried in turn, each within the timeout (see
    :func:`_one_dsn_per_host`), until one connects; the last one's error is raised,
    or at once a refusal for good (an unknown role or database, failed
    authentication), as libpq does."""
    timeout = float(connect_timeout(dsn) or _ASYNCPG_DEFAULT_TIMEOUT)
    options = {**asyncpg_connect_args(dsn), **kwargs}
    *others, last = _one_dsn_per_host(dsn)
    for target in others:
        try:
            return await _asyncpg_connect_once(target, timeout, options)
        except Exception as exc:
            if refused_for_good(exc):
                raise
    return await _asyncpg_connect_once(last, timeout, options)


async def _asyncpg_connect_once(dsn: str, timeout: float, options: dict[str, Any]) -> Any:
    try:
        return await asyncpg.connect(_asyncpg_dsn(dsn), timeout=timeout, **options)
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
