"""Executors: the one place that knows how each driver runs a statement.

pgqueue talks to PostgreSQL through three kinds of connection: asyncpg (the worker and
the async face), psycopg's AsyncConnection and psycopg's Connection (the sync face and
callers' own connections). Each is wrapped in an executor with the same two calls, so
the operations in ``pgqueue.driver`` are written once per face, not once per driver.
All statements use ``$n`` placeholders, which asyncpg and psycopg's raw cursors share.
"""

from __future__ import annotations

import functools
import re
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import asyncpg
import psycopg
from psycopg.pq import TransactionStatus

from pgqueue.errors import UnsupportedConnectionError, schema_not_ready

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

# A row of either driver: asyncpg's Record or psycopg's NamedRow, read by position or
# by column name (row["id"]).
Row = Any


_COPY_STATEMENT = re.compile(
    r"COPY\s+(?P<schema>\w+)\.(?P<table>\w+)\s*\((?P<columns>[\w\s,]+)\)\s+FROM\s+STDIN",
    re.IGNORECASE,
)


def parse_copy_statement(sql: str) -> tuple[str, str, list[str]]:
    """Schema, table and columns of a ``COPY s.t (a, b) FROM STDIN`` statement (asyncpg's
    COPY call takes them apart rather than as a statement)."""
    match = _COPY_STATEMENT.search(sql)
    if match is None:
        raise ValueError(f"not a COPY ... FROM STDIN statement: {sql!r}")
    columns = [c.strip() for c in match["columns"].split(",")]
    return match["schema"], match["table"], columns


class AsyncExecutor(Protocol):
    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    async def copy_in(self, sql: str, records: Sequence[Sequence[Any]]) -> None: ...

    def atomic(self) -> AbstractAsyncContextManager[None]:
        """A block whose statements all apply or none do, inside the caller's
        transaction when there is one (a savepoint) and never committing it."""
        ...


class SyncExecutor(Protocol):
    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    def copy_in(self, sql: str, records: Sequence[Sequence[Any]]) -> None: ...

    def atomic(self) -> AbstractContextManager[None]: ...


class AsyncpgExecutor:
    __slots__ = ("conn",)

    def __init__(self, conn: asyncpg.Connection[Any] | Any) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        try:
            return list(await self.conn.fetch(sql, *args))
        except asyncpg.PostgresError as exc:
            _raise_schema_not_ready(exc)
            raise

    async def copy_in(self, sql: str, records: Sequence[Sequence[Any]]) -> None:
        schema, table, columns = parse_copy_statement(sql)
        await self.conn.copy_records_to_table(
            table, schema_name=schema, columns=columns, records=records
        )

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        # asyncpg has no implicit transactions: inside one this is a savepoint, outside
        # it is BEGIN ... COMMIT around our own statements only.
        async with self.conn.transaction():
            yield


class PsycopgAsyncExecutor:
    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        async with psycopg.AsyncRawCursor(self.conn, row_factory=named_row) as cur:
            try:
                await cur.execute(sql, args)
            except psycopg.DatabaseError as exc:
                _raise_schema_not_ready(exc)
                raise
            return list(await cur.fetchall()) if cur.description is not None else []

    async def copy_in(self, sql: str, records: Sequence[Sequence[Any]]) -> None:
        async with self.conn.cursor() as cur, cur.copy(sql) as copy:
            for record in records:
                await copy.write_row(record)

    def atomic(self) -> AbstractAsyncContextManager[None]:
        if _opens_implicit_transaction(self.conn.autocommit, self.conn.info.transaction_status):
            # The caller's implicit transaction will hold our statements; opening a
            # transaction() here would COMMIT it behind the caller's back.
            return _async_nullcontext()
        return _async_transaction(self.conn)


# pgqueue's own connections keep one raw cursor for their one-statement calls: making a
# cursor costs about as much as the rest of an enqueue's Python work together.
_OWN_CURSOR = "_pgqueue_raw_cursor"


class PsycopgExecutor:
    __slots__ = ("conn", "own")

    def __init__(self, conn: psycopg.Connection[Any], *, own: bool = False) -> None:
        self.conn = conn
        # Only on pgqueue's own connections: a cursor stored on a caller's connection
        # would outlive the call.
        self.own = own

    def fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        try:
            if self.own:
                cur = getattr(self.conn, _OWN_CURSOR, None)
                if cur is None or cur.closed:
                    cur = psycopg.RawCursor(self.conn, row_factory=named_row)
                    setattr(self.conn, _OWN_CURSOR, cur)
                cur.execute(sql, args)
                return list(cur.fetchall()) if cur.description is not None else []
            with psycopg.RawCursor(self.conn, row_factory=named_row) as cur:
                cur.execute(sql, args)
                return list(cur.fetchall()) if cur.description is not None else []
        except psycopg.DatabaseError as exc:
            _raise_schema_not_ready(exc)
            raise

    def copy_in(self, sql: str, records: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur, cur.copy(sql) as copy:
            for record in records:
                copy.write_row(record)

    def atomic(self) -> AbstractContextManager[None]:
        if _opens_implicit_transaction(self.conn.autocommit, self.conn.info.transaction_status):
            return nullcontext()
        return _sync_transaction(self.conn)


class NamedRow(tuple[Any, ...]):
    """A psycopg row read like asyncpg's Record: by position or by column name, so that
    one decoder (pgqueue.jobs) reads either driver's rows by name, never by position."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """The column ``key``, or ``default`` when the row has none (as Record.get)."""
        index = self._index.get(key)
        return default if index is None else tuple.__getitem__(self, index)


@functools.cache
def _row_class(names: tuple[str, ...]) -> type[NamedRow]:
    # One class per shape of result (a handful of statements), made once.
    return type(
        "NamedRow", (NamedRow,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}}
    )


def named_row(cursor: Any) -> Callable[[Sequence[Any]], Any]:
    """psycopg row factory making :class:`NamedRow` rows."""
    description = cursor.description
    if description is None:
        return tuple
    return _row_class(tuple(column.name for column in description))


def _raise_schema_not_ready(exc: BaseException) -> None:
    # Every statement of pgqueue's passes here: a database never migrated says
    # "run pgqueue migrate" instead of a driver's UndefinedTable.
    missing = schema_not_ready(exc)
    if missing is not None:
        raise missing from exc


def _opens_implicit_transaction(autocommit: bool, status: TransactionStatus) -> bool:
    return not autocommit and status == TransactionStatus.IDLE


@asynccontextmanager
async def _async_nullcontext() -> AsyncIterator[None]:
    yield


@asynccontextmanager
async def _async_transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    async with conn.transaction():
        yield


@contextmanager
def _sync_transaction(conn: psycopg.Connection[Any]) -> Iterator[None]:
    with conn.transaction():
        yield


def sync_executor_for(conn: object) -> SyncExecutor:
    """An executor for a caller's sync connection: psycopg, or a SQLAlchemy Connection
    or Session running on psycopg."""
    if isinstance(conn, psycopg.Connection):
        return PsycopgExecutor(conn)
    driver_conn = _sqlalchemy_sync_driver_connection(conn)
    if isinstance(driver_conn, psycopg.Connection):
        return PsycopgExecutor(driver_conn)
    if isinstance(conn, psycopg.AsyncConnection | asyncpg.Connection):
        raise UnsupportedConnectionError(
            f"{type(conn).__name__} is an async connection: use the async call (await ...enqueue)"
        )
    raise UnsupportedConnectionError(
        f"cannot enqueue on {type(conn).__module__}.{type(conn).__name__}: pass a psycopg 3 "
        "Connection, or a SQLAlchemy Connection/Session using the postgresql+psycopg driver"
    )


async def async_executor_for(conn: object) -> AsyncExecutor:
    """An executor for a caller's async connection: asyncpg, psycopg's AsyncConnection,
    or a SQLAlchemy AsyncConnection/AsyncSession running on either."""
    if isinstance(conn, psycopg.AsyncConnection):
        return PsycopgAsyncExecutor(conn)
    if _is_asyncpg_connection(conn):
        return AsyncpgExecutor(conn)
    driver_conn = await _sqlalchemy_async_driver_connection(conn)
    if isinstance(driver_conn, psycopg.AsyncConnection):
        return PsycopgAsyncExecutor(driver_conn)
    if driver_conn is not None and _is_asyncpg_connection(driver_conn):
        return AsyncpgExecutor(driver_conn)
    if isinstance(conn, psycopg.Connection):
        raise UnsupportedConnectionError(
            "psycopg.Connection is a sync connection: use the sync call (enqueue_sync)"
        )
    raise UnsupportedConnectionError(
        f"cannot enqueue on {type(conn).__module__}.{type(conn).__name__}: pass an asyncpg "
        "or psycopg 3 async connection, or a SQLAlchemy AsyncConnection/AsyncSession"
    )


def _is_asyncpg_connection(conn: object) -> bool:
    # A pooled asyncpg connection is a PoolConnectionProxy, not a Connection subclass.
    return isinstance(conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy)


def _sqlalchemy_sync_driver_connection(conn: object) -> object | None:
    try:
        from sqlalchemy.engine import Connection  # noqa: PLC0415 - optional integration
        from sqlalchemy.orm import Session  # noqa: PLC0415
    except ImportError:  # pragma: no cover - sqlalchemy ships with alembic
        return None
    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, Connection):
        if not conn.in_transaction():
            # What SQLAlchemy's own execute() would do (autobegin), so that the caller's
            # commit() or rollback() covers the job.
            conn.begin()
        return conn.connection.driver_connection
    return None


async def _sqlalchemy_async_driver_connection(conn: object) -> object | None:
    try:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, AsyncConnection):
        if not conn.in_transaction():
            await conn.begin()
        raw = await conn.get_raw_connection()
        driver_conn: object = raw.driver_connection
        if (
            isinstance(driver_conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy)
            and not driver_conn.is_in_transaction()
        ):
            # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement
            # that goes through it; send one so the job joins the caller's transaction.
            await conn.exec_driver_sql("SELECT 1")
        return driver_conn
    return None
