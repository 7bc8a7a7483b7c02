"""pgqueue's own connections for the Queue's calls: a pool, plus one connection kept
for the uncontended case.

Most enqueues come one at a time. Taking a connection from a pool and giving it back
costs tens of microseconds (asyncpg's ``Pool.acquire`` more than the insert's own
Python work), so a caller that finds nobody else enqueueing uses a connection held
for that purpose; concurrent callers fall through to the pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import psycopg
import psycopg_pool
import structlog
from psycopg.pq import TransactionStatus

from pgqueue.connect import asyncpg_pool, psycopg_connect_args
from pgqueue.dberrors import (
    asyncpg_fileno,
    looks_dead,
)
from pgqueue.errors import (
    DatabaseUnavailableError,
    PgQueueError,
    PoolTimeoutError,
)
from pgqueue.executors import AsyncpgExecutor, PsycopgExecutor
from pgqueue.pool_calls import PoolCalls
from pgqueue.pool_calls_sync import PoolCallsSync

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from pgqueue.executors import AsyncExecutor, SyncExecutor

T = TypeVar("T")
_log = structlog.get_logger("pgqueue.queue")


async def keep_session(_conn: object) -> None:
    """The ``reset`` of pgqueue's own asyncpg pools: nothing. pgqueue never changes
    session state on a pooled connection (no SET, no LISTEN, no open transaction), so
    asyncpg's default reset query would only cost a round trip on every release."""


@asynccontextmanager
async def acquire(pool: asyncpg.Pool[Any]) -> AsyncIterator[Any]:
    """A pooled connection that is closed, not handed back, when the block fails.

    pgqueue's pools skip asyncpg's reset query on release (``keep_session``), and with
    it the check that would have caught a connection left mid-operation by an error or
    a cancellation (asyncpg's "another operation is in progress"). So a connection whose
    block raised is terminated and the pool opens a fresh one; the next user never
    inherits a broken one."""
    async with pool.acquire() as conn:
        try:
            yield conn
        except BaseException as exc:
            if not _leaves_connection_sound(exc):
                # A connection the server dropped may already be back with the pool,
                # whose proxy then refuses: the error to raise is the one that got here.
                with suppress(asyncpg.InterfaceError):
                    conn.terminate()
            raise


def _leaves_connection_sound(exc: BaseException) -> bool:
    # An error the server reported (and pgqueue's typed errors made from one) ends the
    # statement cleanly; anything else (cancellation, a lost socket, the driver's own
    # confusion) may leave the connection mid-operation.
    return isinstance(exc, asyncpg.PostgresError | PgQueueError) and not isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.exceptions.CrashShutdownError,
    )


class _FoundDeadError(ConnectionError):
    """Every connection tried was found dead before anything was sent (a restart
    dropped them all): safe to try again once the database answers."""


class AsyncConnections(PoolCalls):
    """An asyncpg pool for one event loop, and a held connection in front of it."""

    def __init__(self, dsn: str, size: int, *, pool_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._size = size
        self._pool_timeout = pool_timeout
        self._pool: asyncpg.Pool[Any] | None = None
        self._held: Any = None  # a pooled connection proxy, kept between calls
        self._held_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()

    def executor(self, conn: Any) -> AsyncExecutor:
        return AsyncpgExecutor(conn)

    async def _opened(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            async with self._open_lock:  # concurrent first calls must share one pool
                if self._pool is None:
                    # No floor of idle connections: asyncpg would keep restoring it in
                    # the background while the database is down (a restart), logging a
                    # traceback each time. The held connection stays open anyway.
                    self._pool = await asyncpg_pool(
                        self._dsn, min_size=0, max_size=self._size, reset=keep_session
                    )
        return self._pool

    @asynccontextmanager
    async def connection(self, deadline: float | None = None) -> AsyncIterator[Any]:
        """A live connection: the held one when nobody else is using it, else one from
        the pool, waiting for one at most until ``deadline`` (``time.monotonic()``)."""
        pool = await self._opened()
        if self._held_lock.locked():
            conn = await self._acquire_live(pool, deadline)
            try:
                yield conn
            except BaseException as exc:
                if not _leaves_connection_sound(exc) and not _released(conn):
                    conn.terminate()  # as in acquire()
                raise
            finally:
                await pool.release(conn)  # a no-op for one already given back
            return
        async with self._held_lock:
            held, self._held = self._held, None
            if held is None or not _reusable(held):
                if held is not None:
                    await _throw_away(pool, held)
                held = await self._acquire_live(pool, deadline)
            self._held = held
            try:
                yield held
            except BaseException as exc:
                if not _leaves_connection_sound(exc):  # as in acquire()
                    self._held = None
                    if not _released(held):
                        held.terminate()  # which also gives it back to the pool
                raise

    async def _acquire_live(self, pool: asyncpg.Pool[Any], deadline: float | None) -> Any:
        # After a restart every idle connection may be dead: each is thrown away (the
        # pool opens a fresh one) without waiting, and a few more than the pool holds
        # are tried before calling it a failure worth backing off for.
        for _ in range(self._size + 1):
            timeout = self._pool_timeout if deadline is None else deadline - time.monotonic()
            try:
                conn = await pool.acquire(timeout=max(timeout, 0.001))
            except TimeoutError as exc:
                raise _pool_timed_out(pool, self._pool_timeout) from exc
            if _reusable(conn):
                return conn
            await _throw_away(pool, conn)
        raise _FoundDeadError("every pooled connection tried was found closed by the server")

    async def close(self) -> None:
        if self._pool is None:
            return
        async with self._held_lock:
            if self._held is not None:
                await self._pool.release(self._held)
                self._held = None
        await self._pool.close()
        self._pool = None


def _released(conn: Any) -> bool:
    """Whether asyncpg has taken a pooled connection back: it does so by itself when it
    sees the connection close (a server restart), and the proxy then refuses all use."""
    try:
        conn.is_closed()
    except asyncpg.InterfaceError:
        return True
    return False


def _reusable(conn: Any) -> bool:
    """Open, idle, and not dropped by the server while idle, even if asyncpg has not yet
    noticed (its event loop has not run since)."""
    try:
        if conn.is_closed() or conn.is_in_transaction():
            return False
    except asyncpg.InterfaceError:  # see _released()
        return False
    return not looks_dead(asyncpg_fileno(conn))


async def _throw_away(pool: asyncpg.Pool[Any], conn: Any) -> None:
    """Give up a connection that is not reusable: one left inside a transaction (a call
    cancelled halfway) goes back to the pool, which rolls it back; a dead one is closed
    (and its pool slot freed for a new one)."""
    if _released(conn):
        return
    if conn.is_closed() or looks_dead(asyncpg_fileno(conn)):
        conn.terminate()
        return
    await pool.release(conn)


def _pool_timed_out(pool: asyncpg.Pool[Any], timeout: float) -> PgQueueError:
    busy = pool.get_size() - pool.get_idle_size()
    if busy >= pool.get_max_size():
        return PoolTimeoutError(
            f"all {busy} connections of the Queue's pool stayed busy for {timeout:g} s "
            "(pool_size, pool_timeout); nothing was written"
        )
    return DatabaseUnavailableError(
        f"no connection to PostgreSQL could be made within {timeout:g} s; nothing was written"
    )


class _ConnectionPool(psycopg_pool.ConnectionPool[psycopg.Connection[Any]]):
    """psycopg_pool's pool, counting its failed connection attempts and keeping the last
    error: it reconnects in the background and tells only the logging module why it
    cannot, while a caller waiting in ``getconn`` learns nothing until its timeout."""

    failures = 0
    connected = 0
    last_error: Exception | None = None

    def _connect(self, timeout: float | None = None) -> psycopg.Connection[Any]:
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            self.last_error = exc
            self.failures += 1
            raise
        self.last_error = None
        self.connected += 1
        return conn

    def answering(self) -> bool:
        """Whether the pool's last connection attempt succeeded."""
        return self.connected > 0 and self.last_error is None


class ConnectFailedError(ConnectionError):
    """The pool's attempts to connect failed while a call waited for a connection:
    nothing was sent, another try is safe."""


# How long a sync call waits for the pool at a time before it looks whether the pool's
# connection attempts are failing (then it logs a failed try and backs off).
_SYNC_WAIT_STEP = 1.0


class SyncConnections(PoolCallsSync):
    """A psycopg pool, and a held connection in front of it; thread-safe."""

    def __init__(self, dsn: str, size: int, name: str, *, pool_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._size = size
        self._pool_timeout = pool_timeout
        self._pool = _ConnectionPool(
            dsn,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True, **psycopg_connect_args(dsn)},
            open=True,
            name=name,
            timeout=pool_timeout,
        )
        self._held: psycopg.Connection[Any] | None = None
        self._held_lock = threading.Lock()

    def executor(self, conn: psycopg.Connection[Any]) -> SyncExecutor:
        return PsycopgExecutor(conn, own=True)

    @contextmanager
    def connection(self, deadline: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        if not self._held_lock.acquire(blocking=False):
            conn = self._getconn_live(deadline)
            try:
                yield conn
            finally:
                self._pool.putconn(conn)  # the pool discards a broken one
            return
        try:
            held = self._held
            if held is None or not _usable(held):
                self._held = None
                if held is not None:
                    _discard_if_dead(held)
                    self._pool.putconn(held)
                held = self._held = self._getconn_live(deadline)
            yield held
        finally:
            self._held_lock.release()

    def _getconn_live(self, deadline: float | None) -> psycopg.Connection[Any]:
        # As in AsyncConnections._acquire_live. While the database is down the pool
        # keeps reconnecting in the background (with its own backoff and jitter, each
        # attempt bounded by the connect timeout) and getconn waits for it, at most until
        # the deadline.
        for _ in range(self._size + 1):
            if deadline is None:
                deadline = time.monotonic() + self._pool_timeout
            conn = self._getconn(deadline)
            if _usable(conn):
                return conn
            _discard_if_dead(conn)
            self._pool.putconn(conn)
        raise _FoundDeadError("every pooled connection tried was found closed by the server")

    def _getconn(self, deadline: float) -> psycopg.Connection[Any]:
        """A connection from the pool; a connection attempt of the pool's that failed
        meanwhile raises :class:`ConnectFailedError` (a failed try, logged and retried
        by the caller), and so does the deadline when the last attempt failed."""
        failures = self._pool.failures
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self._pool.getconn(timeout=max(min(remaining, _SYNC_WAIT_STEP), 0.001))
            except psycopg_pool.PoolTimeout as exc:
                error = self._pool.last_error
                failed = self._pool.failures != failures or remaining <= _SYNC_WAIT_STEP
                if error is not None and failed:
                    raise ConnectFailedError(
                        f"cannot connect to PostgreSQL: {_one_line(error)}"
                    ) from error
                if remaining > _SYNC_WAIT_STEP:
                    continue
                if self._pool.answering():  # the database is there: the pool is busy
                    raise PoolTimeoutError(
                        f"all {self._size} connections of the Queue's pool stayed busy for "
                        f"{self._pool_timeout:g} s (pool_size, pool_timeout); nothing was "
                        "written"
                    ) from exc
                raise DatabaseUnavailableError(
                    f"no connection to PostgreSQL could be made within "
                    f"{self._pool_timeout:g} s; nothing was written"
                ) from exc

    def close(self) -> None:
        with self._held_lock:
            if self._held is not None:
                self._pool.putconn(self._held)
                self._held = None
        self._pool.close()


def _one_line(exc: BaseException) -> str:
    # libpq's messages run over several lines (a hint on the second).
    return " ".join(str(exc).split()) or type(exc).__name__


def _usable(conn: psycopg.Connection[Any]) -> bool:
    """Idle, open, and not dropped by the server while it sat in the pool."""
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        return False
    return not looks_dead(conn.fileno())


def _discard_if_dead(conn: psycopg.Connection[Any]) -> None:
    # A closed connection is thrown away by the pool when it is put back; one that is
    # only idle inside a transaction is rolled back and kept.
    if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
        conn.close()
