"""A worker's entry in ``pgqueue.workers``: the id its claims and heartbeats carry.

A worker registers (with its own lease, by which the rescue judges it) before its
first claim, leaves at the end, and comes back under a new id when it learns it was
declared dead.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from pgqueue import driver
from pgqueue.connect import asyncpg_pool
from pgqueue.dberrors import DATABASE_ERRORS, connection_failed, reconnect_delay
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire, keep_session
from pgqueue.worker.listener import first_of, unless_set

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    import asyncpg


class Membership:
    def __init__(
        self, *, queues: list[str], concurrency: int, lease: float, heartbeat_interval: float
    ) -> None:
        self.worker_id = str(uuid.uuid4())
        # When the last registration that succeeded was sent (time.monotonic()): the
        # lease of a new entry runs from no sooner than that.
        self.registered_at = -math.inf
        self._queues = queues
        self._concurrency = concurrency
        self._lease = lease
        self._heartbeat_interval = heartbeat_interval

    def renew(self) -> None:
        """A new id: the old one was declared dead, and its jobs rescued."""
        self.worker_id = str(uuid.uuid4())

    async def register(self, pool: asyncpg.Pool[Any], log: Any) -> bool:
        """Enter this worker in pgqueue.workers; False (logged) if the database failed."""
        try:
            async with acquire(pool) as conn:
                sent_at = time.monotonic()
                await driver.register_worker(
                    AsyncpgExecutor(conn),
                    self.worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self._queues,
                    concurrency=self._concurrency,
                    lease=self._lease,
                    heartbeat_interval=self._heartbeat_interval,
                )
        except DATABASE_ERRORS as exc:
            log.warning("worker_register_failed", error=repr(exc))
            return False
        self.registered_at = sent_at
        return True

    async def deregister(self, pool: asyncpg.Pool[Any], log: Any) -> None:
        try:
            async with acquire(pool) as conn:
                await driver.deregister_worker(AsyncpgExecutor(conn), self.worker_id)
        except DATABASE_ERRORS as exc:  # the rescue drops the row after our lease
            log.warning("worker_deregister_failed", error=repr(exc))

    async def join(
        self,
        dsn: str,
        stop: asyncio.Event,
        log: Any,
        *,
        init: Callable[[asyncpg.Connection[Any]], Awaitable[None]] | None = None,
    ) -> asyncpg.Pool[Any] | None:
        """The worker's pool, once registered, waiting (with backoff) for a database that
        is not up yet, as happens when workers and the database start together; None if
        stopped first. ``init``: run on each new connection of the pool."""
        failures = 0
        while not stop.is_set():
            try:
                # Raced against a stop: a server that never answers must not hold up
                # SIGTERM for a connect timeout (asyncpg cleans up what it opened).
                pool = await unless_set(
                    stop, asyncpg_pool(dsn, min_size=2, max_size=4, reset=keep_session, init=init)
                )
            except DATABASE_ERRORS as exc:
                if not connection_failed(exc):
                    raise  # refused for good: an unknown database or role, a bad password
                failures += 1
                delay = reconnect_delay(failures)
                log.warning(
                    "database_unreachable",
                    error=repr(exc),
                    attempt=failures,
                    retry_in=round(delay, 3),
                )
                await first_of(stop, timeout=delay)
            else:
                if pool is None:  # stopped while connecting
                    return None
                if await unless_set(stop, self.register(pool, log)):
                    return pool
                await pool.close()
                failures += 1  # not in a tight loop: back off as for a connection
                await first_of(stop, timeout=reconnect_delay(failures))
        return None

    async def rejoin(self, pool: asyncpg.Pool[Any], stop: asyncio.Event, log: Any) -> bool:
        """Register again (under a new id) until it works; False if stopped first."""
        failures = 0
        while not stop.is_set():
            if await self.register(pool, log):
                log.info("worker_rejoined", worker_id=self.worker_id)
                return True
            failures += 1
            await first_of(stop, timeout=reconnect_delay(failures))
        return False
