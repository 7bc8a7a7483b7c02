"""The Queue's configuration and connections: what its async and sync calls
(``pgqueue.queue_calls`` and the generated ``queue_calls_sync``) run on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any, Self, Unpack

from pgqueue.checks import validate_queue_name
from pgqueue.connect import declare_pooler
from pgqueue.embedded import EmbeddedServer, resolve_dsn
from pgqueue.errors import InlineModeError
from pgqueue.hooks import Hooks
from pgqueue.inline import InlineJobs
from pgqueue.job_options import DEFAULT_QUEUE
from pgqueue.pools import AsyncConnections, SyncConnections
from pgqueue.results import FinishedWaiters, result_of, wait_sync
from pgqueue.validation import build_with_options

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator, Sequence
    from pathlib import Path

    from pgqueue.jobs import EnqueueResult, Job, JobOptions, JobSpec
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
        inline: bool = False,
        pooler: bool = False,
        listen_dsn: str | None = None,
    ) -> None:
        validate_queue_name(default_queue)
        if not pool_timeout > 0:
            raise ValueError("pool_timeout must be positive")
        if listen_dsn is not None and not pooler:
            raise ValueError("listen_dsn is the direct DSN beside a pooler: give pooler=True too")
        # Behind a transaction pooler (PgBouncer): no prepared statements on this DSN, and
        # LISTEN on listen_dsn (see pgqueue.connect.declare_pooler).
        self._pooler = pooler
        self._listen_dsn = listen_dsn
        if pooler and dsn is not None:
            declare_pooler(dsn, listen_dsn=listen_dsn)
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
        # Inline mode (pgqueue.inline): jobs run at enqueue and are kept here, in memory;
        # no database is ever used. None: the normal mode.
        self._inline: InlineJobs | None = InlineJobs() if inline else None
        # Failure hooks and instrumentations (pgqueue.hooks): on_failure(), instrument().
        self.hooks = Hooks()

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
    def inline(self) -> bool:
        """Whether this Queue is in inline mode (see :mod:`pgqueue.inline`)."""
        return self._inline is not None

    @property
    def inline_jobs(self) -> InlineJobs:
        """The jobs of a Queue in inline mode, in memory (:class:`~pgqueue.inline.InlineJobs`:
        ``.jobs`` in enqueue order, ``.of_task(task)``, ``.clear()``); InlineModeError
        when it is not in inline mode."""
        if self._inline is None:
            raise InlineModeError("this Queue is not in inline mode: its jobs are in the database")
        return self._inline

    @property
    def dsn(self) -> str:
        """The database's DSN, starting the embedded server if that is the default.
        InlineModeError in inline mode, which has no database."""
        if self._inline is not None:
            raise InlineModeError(
                "this Queue is in inline mode and has no database: a worker, and every call "
                "that needs the database, cannot run on it"
            )
        with self._lock:
            if self._resolved_dsn is None:
                self._resolved_dsn, self._embedded = resolve_dsn(
                    self._dsn_arg, data_dir=self._data_dir
                )
                if self._pooler:  # the DSN came from PGQUEUE_DSN
                    declare_pooler(self._resolved_dsn, listen_dsn=self._listen_dsn)
            return self._resolved_dsn

    def build(
        self, task: str, args: dict[str, Any] | None = None, **options: Unpack[JobOptions]
    ) -> JobSpec:
        """A validated job for a task given by name; defaults come from the task when it
        is registered here (producers need not import the workers' code)."""
        registered = self.tasks.get(task)
        defaults: JobOptions = registered.defaults if registered else {"queue": self.default_queue}
        return build_with_options(task, args, options, task_defaults=defaults)

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

    # --- inline mode (pgqueue.inline) -----------------------------------------------------

    async def _inline_enqueue(self, spec: JobSpec) -> EnqueueResult:
        return await self.inline_jobs.enqueue(self.tasks, spec, hooks=self.hooks)

    def _inline_enqueue_sync(self, spec: JobSpec) -> EnqueueResult:
        return self.inline_jobs.enqueue_sync(self.tasks, spec, hooks=self.hooks)

    async def _inline_enqueue_many(self, specs: Sequence[JobSpec]) -> list[EnqueueResult]:
        return await self.inline_jobs.enqueue_many(self.tasks, specs, hooks=self.hooks)

    def _inline_enqueue_many_sync(self, specs: Sequence[JobSpec]) -> list[EnqueueResult]:
        return self.inline_jobs.enqueue_many_sync(self.tasks, specs, hooks=self.hooks)

    def _result_of(self, job: Job) -> Any:
        """A finished job's return value, or JobFailedError (in inline mode chained to
        the exception its last attempt raised)."""
        if self._inline is not None:
            return self._inline.result_of(job)
        return result_of(job)

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
        if self._inline is not None:
            return self._inline.finished(job_id)
        return await self._finished_waiters().wait(job_id, timeout)

    def _wait_finished_sync(self, job_id: int, timeout: float | None) -> Job:
        if self._inline is not None:
            return self._inline.finished(job_id)
        return wait_sync(self.dsn, job_id, timeout)

    async def close(self) -> None:
        """Close this loop's connections (its waits' LISTEN one too) and the sync ones,
        and stop an embedded server this Queue started."""
        await self._close_loop_connections()
        self.close_sync()

    async def _close_loop_connections(self) -> None:
        """Close this loop's connections only (pgqueue.testing.drain_sync's loop ends)."""
        waiters = self._waiters.pop(asyncio.get_running_loop(), None)
        if waiters is not None:
            await waiters.close()
        conns = self._async.pop(asyncio.get_running_loop(), None)
        if conns is not None:
            await conns.close()

    def close_sync(self) -> None:
        with self._lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        if self._embedded is not None and not self._async and not self._waiters:
            self._embedded.stop()
            self._embedded = None
            self._resolved_dsn = None

    # --- tests: another database, or inline mode, for a while (pgqueue.testing) ---------

    @contextlib.contextmanager
    def _retargeted(self, *, dsn: str | None, inline: InlineJobs | None) -> Iterator[None]:
        """For the length of the block, this Queue uses ``dsn`` (or, with ``inline``,
        that in-memory store and no database) with connections of its own, which are
        closed at the end; then its own database, connections and mode are back."""
        with self._lock:
            saved = (
                self._dsn_arg,
                self._resolved_dsn,
                self._embedded,
                self._async,
                self._sync,
                self._waiters,
                self._inline,
            )
            self._dsn_arg, self._resolved_dsn, self._embedded = dsn, None, None
            self._async, self._sync, self._waiters = {}, None, {}
            self._inline = inline
        try:
            yield
        finally:
            with self._lock:
                opened = (self._async, self._sync, self._waiters, self._embedded)
                (
                    self._dsn_arg,
                    self._resolved_dsn,
                    self._embedded,
                    self._async,
                    self._sync,
                    self._waiters,
                    self._inline,
                ) = saved
            _close_elsewhere(*opened)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sync()


def _close_elsewhere(
    conns: dict[asyncio.AbstractEventLoop, AsyncConnections],
    sync: SyncConnections | None,
    waiters: dict[asyncio.AbstractEventLoop, FinishedWaiters],
    embedded: EmbeddedServer | None,
) -> None:
    """Close connections that are no longer any Queue's, from sync code: each loop's
    on that loop (run to completion when idle, else handed to it); those of a closed
    loop are gone with it."""
    closing: list[tuple[asyncio.AbstractEventLoop, Coroutine[Any, Any, None]]] = [
        (loop, w.close()) for loop, w in waiters.items()
    ]
    closing += [(loop, c.close()) for loop, c in conns.items()]
    for loop, close in closing:
        if loop.is_closed():
            close.close()  # never started: nothing to await
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(close, loop)
        else:
            loop.run_until_complete(close)
    if sync is not None:
        sync.close()
    if embedded is not None:
        embedded.stop()
