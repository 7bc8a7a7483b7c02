"""The Queue's configuration and connections: what its async and sync calls
(``pgqueue.queue_calls`` and the generated ``queue_calls_sync``) run on."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any, Self, Unpack

from pgqueue.embedded import EmbeddedServer, resolve_dsn
from pgqueue.jobs import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JobOptions, JobSpec
from pgqueue.pools import AsyncConnections, SyncConnections
from pgqueue.results import FinishedWaiters, wait_sync
from pgqueue.validation import build_with_options, validate_queue_name

if TYPE_CHECKING:
    from pathlib import Path

    from pgqueue.jobs import Job
    from pgqueue.tasks import Task


class QueueCore:
    """The part of :class:`~pgqueue.Queue` its calls stand on: the tasks registered,
    the DSN, the connections, and building jobs (see the Queue for all of it)."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        data_dir: Path | None = None,
        default_queue: str = DEFAULT_QUEUE,
        pool_size: int = 10,
        pool_timeout: float = 10.0,
    ) -> None:
        validate_queue_name(default_queue)
        if not pool_timeout > 0:
            raise ValueError("pool_timeout must be positive")
        self.default_queue = default_queue
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._dsn_arg = dsn
        self._data_dir = data_dir
        self._pool_size = pool_size
        # How long a call waits for a usable connection of our own: a free one while all
        # are busy (then PoolTimeoutError), or a new one while the database is away,
        # retrying with backoff (then DatabaseUnavailableError).
        self._pool_timeout = pool_timeout
        self._resolved_dsn: str | None = None
        self._embedded: EmbeddedServer | None = None
        self._lock = threading.Lock()
        # Async connections belong to the loop that made them: one set per loop.
        self._async: dict[asyncio.AbstractEventLoop, AsyncConnections] = {}
        self._sync: SyncConnections | None = None
        # Waits for jobs to finish: one LISTEN connection per loop (pgqueue.results).
        self._waiters: dict[asyncio.AbstractEventLoop, FinishedWaiters] = {}

    # --- configuration ---------------------------------------------------------------

    @property
    def configured_dsn(self) -> str | None:
        """The ``dsn`` this Queue was given, or None; unlike :attr:`dsn` it starts
        nothing (``pgqueue worker`` uses it when neither ``--dsn`` nor ``PGQUEUE_DSN``
        is set)."""
        return self._dsn_arg

    @property
    def configured_data_dir(self) -> Path | None:
        """The ``data_dir`` this Queue was given for the embedded server, or None."""
        return self._data_dir

    @property
    def dsn(self) -> str:
        """The database's DSN, starting the embedded server if that is the default."""
        with self._lock:
            if self._resolved_dsn is None:
                self._resolved_dsn, self._embedded = resolve_dsn(
                    self._dsn_arg, data_dir=self._data_dir
                )
            return self._resolved_dsn

    def build(
        self, task: str, args: dict[str, Any] | None = None, **options: Unpack[JobOptions]
    ) -> JobSpec:
        """A validated job for a task given by name; defaults come from the task when it
        is registered here (producers need not import the workers' code)."""
        registered = self.tasks.get(task)
        return build_with_options(
            task,
            args,
            options,
            queue=registered.queue if registered else self.default_queue,
            priority=registered.priority if registered else 0,
            max_attempts=registered.max_attempts if registered else DEFAULT_MAX_ATTEMPTS,
        )

    # --- connections ---------------------------------------------------------------------

    def _async_connections(self) -> AsyncConnections:
        loop = asyncio.get_running_loop()
        conns = self._async.get(loop)
        if conns is None:
            for old in [old for old in self._async if old.is_closed()]:
                del self._async[old]  # pools of finished loops: their sockets are gone
            conns = self._async[loop] = AsyncConnections(
                self.dsn, self._pool_size, pool_timeout=self._pool_timeout
            )
        return conns

    def _sync_connections(self) -> SyncConnections:
        sync = self._sync
        if sync is not None:  # the common case, without taking any lock
            return sync
        dsn = self.dsn  # before taking the lock: resolving the DSN takes it too
        with self._lock:
            if self._sync is None:
                self._sync = SyncConnections(
                    dsn,
                    self._pool_size,
                    name=f"pgqueue-{os.getpid()}",
                    pool_timeout=self._pool_timeout,
                )
            return self._sync

    # --- waiting for jobs to finish (Queue.wait and Queue.result) ---------------------

    def _finished_waiters(self) -> FinishedWaiters:
        loop = asyncio.get_running_loop()
        waiters = self._waiters.get(loop)
        if waiters is None:
            for old in [old for old in self._waiters if old.is_closed()]:
                del self._waiters[old]  # as in _async_connections
            waiters = self._waiters[loop] = FinishedWaiters(self.dsn)
        return waiters

    async def _wait_finished(self, job_id: int, timeout: float | None) -> Job:
        return await self._finished_waiters().wait(job_id, timeout)

    def _wait_finished_sync(self, job_id: int, timeout: float | None) -> Job:
        return wait_sync(self.dsn, job_id, timeout)

    async def close(self) -> None:
        """Close this loop's connections (its waits' LISTEN one too) and the sync ones,
        and stop an embedded server this Queue started."""
        waiters = self._waiters.pop(asyncio.get_running_loop(), None)
        if waiters is not None:
            await waiters.close()
        conns = self._async.pop(asyncio.get_running_loop(), None)
        if conns is not None:
            await conns.close()
        self.close_sync()

    def close_sync(self) -> None:
        with self._lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        if self._embedded is not None and not self._async and not self._waiters:
            self._embedded.stop()
            self._embedded = None
            self._resolved_dsn = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sync()
