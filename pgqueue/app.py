"""The Queue: the registry of tasks and the entry point for enqueueing and inspection."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Self,
    TypedDict,
    TypeVar,
    Unpack,
    overload,
)

import structlog

from pgqueue import driver, driver_sync
from pgqueue.embedded import EmbeddedServer, resolve_dsn
from pgqueue.errors import InvalidJobError, UnknownTaskError
from pgqueue.executors import (
    AsyncpgExecutor,
    PsycopgExecutor,
    async_executor_for,
    sync_executor_for,
)
from pgqueue.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    EnqueueResult,
    Job,
    JobSpec,
    QueueStats,
    build_job,
    check_spec,
    validate_job_id,
    validate_queue_name,
    validate_task_name,
)
from pgqueue.pools import AsyncConnections, SyncConnections
from pgqueue.retention import PRUNE_BATCH, Retention
from pgqueue.retry import RetryPolicy
from pgqueue.tasks import Task

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from datetime import datetime

    from pgqueue.states import JobState

P = ParamSpec("P")
R = TypeVar("R")


class JobOptions(TypedDict, total=False):
    """Per-job options of :meth:`Queue.enqueue` and friends; each one left out takes the
    registered task's default (or the Queue's, for a task registered elsewhere)."""

    queue: str
    priority: int
    max_attempts: int
    run_at: datetime
    delay: float
    idempotency_key: str
    timeout: float


class Queue:
    """A pgqueue application: its tasks, and the database that holds their jobs.

    ``dsn`` names the database; without one, ``PGQUEUE_DSN`` is used, and without that an
    embedded PostgreSQL is started (or reused) in ``data_dir`` on first use.
    Connections are opened lazily: an asyncpg pool for the async calls and a psycopg
    pool for the ``*_sync`` calls. Close them with ``close()`` / ``close_sync()``.

    Calls on these connections (not on a ``conn=`` of yours) ride out a database
    restart: a connection found dead, or one that cannot be made yet, is retried with
    backoff for up to ``pool_timeout`` seconds, as is a statement the server rolled back
    (deadlock, serialization failure, lock or statement timeout). A connection lost
    mid-statement raises ``OutcomeUnknownError``, except for idempotent calls (reads,
    jobs with idempotency keys), which are retried. ``pool_timeout`` also bounds the
    wait for a free connection when all ``pool_size`` are busy (``PoolTimeoutError``).
    Each connection attempt gives up after the connect timeout (5 s, see
    :mod:`pgqueue.connect`), and each failed try is logged (``queue_call_retrying``).
    """

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

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        max_attempts: int = ...,
        retry: RetryPolicy | None = ...,
        timeout: float | None = ...,
        transactional: Literal[True],
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        max_attempts: int = ...,
        retry: RetryPolicy | None = ...,
        timeout: float | None = ...,
        process: bool = ...,
        transactional: Literal[False] = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        process: bool = False,
        transactional: bool = False,
    ) -> Any:
        """Register a function as a task (``@queue.task`` or ``@queue.task(...)``).

        Async functions run on the worker's event loop; plain functions run in its
        thread pool, never on the loop, or with ``process=True`` in its process pool.
        ``timeout`` bounds one attempt, in seconds. A ``transactional`` task takes a
        connection first (asyncpg for async, psycopg for plain functions) whose
        transaction also marks the job succeeded. ``name`` defaults to
        ``module.qualname``, where module is the name a worker imports the function's
        module by: for a script run as ``python app.py`` that is ``app``, not
        ``__main__`` (see :func:`importable_module_name`).
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{importable_module_name(func)}.{func.__qualname__}"
            try:
                validate_task_name(task_name)
            except InvalidJobError as exc:
                raise InvalidJobError(f"{exc}; pass name= to @task") from exc
            if task_name in self.tasks:
                raise ValueError(f"a task named {task_name!r} is already registered")
            task: Task[Any, Any] = Task(
                self,
                func,
                name=task_name,
                queue=queue or self.default_queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry or RetryPolicy(),
                timeout=timeout,
                process=process,
                transactional=transactional,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(f"no task named {name!r} is registered") from None

    def queues(self) -> list[str]:
        """The queues this app's tasks use, in a stable order."""
        return sorted({t.queue for t in self.tasks.values()} or {self.default_queue})

    # --- enqueueing ------------------------------------------------------------------

    def build(
        self, task: str, args: dict[str, Any] | None = None, **options: Unpack[JobOptions]
    ) -> JobSpec:
        """A validated job for a task given by name; defaults come from the task when it
        is registered here (producers need not import the workers' code)."""
        registered = self.tasks.get(task)
        queue = options.get("queue")
        priority = options.get("priority")
        max_attempts = options.get("max_attempts")
        return build_job(
            task,
            args,
            # None takes the default; "" is refused by build_job like any bad name.
            queue=queue
            if queue is not None
            else (registered.queue if registered else self.default_queue),
            priority=priority
            if priority is not None
            else (registered.priority if registered else 0),
            max_attempts=max_attempts
            if max_attempts is not None
            else (registered.max_attempts if registered else DEFAULT_MAX_ATTEMPTS),
            run_at=options.get("run_at"),
            delay=options.get("delay"),
            idempotency_key=options.get("idempotency_key"),
            timeout=options.get("timeout"),
        )

    async def enqueue(
        self,
        task: str,
        args: dict[str, Any] | None = None,
        *,
        conn: Any = None,
        **options: Unpack[JobOptions],
    ) -> EnqueueResult:
        """Enqueue one job by task name; with ``conn``, inside that connection's
        transaction (a rollback leaves no job and wakes no worker)."""
        return await self.enqueue_spec(self.build(task, args, **options), conn=conn)

    def enqueue_sync(
        self,
        task: str,
        args: dict[str, Any] | None = None,
        *,
        conn: Any = None,
        **options: Unpack[JobOptions],
    ) -> EnqueueResult:
        """The sync twin of :meth:`enqueue`."""
        return self.enqueue_spec_sync(self.build(task, args, **options), conn=conn)

    async def enqueue_spec(self, spec: JobSpec, *, conn: Any = None) -> EnqueueResult:
        spec = check_spec(spec)
        if conn is not None:
            return await driver.enqueue(await async_executor_for(conn), spec)
        return await self._async_connections().run(
            lambda own: driver.enqueue(AsyncpgExecutor(own), spec),
            idempotent=spec.idempotency_key is not None,
        )

    def enqueue_spec_sync(self, spec: JobSpec, *, conn: Any = None) -> EnqueueResult:
        spec = check_spec(spec)
        if conn is not None:
            return driver_sync.enqueue(sync_executor_for(conn), spec)
        return self._sync_connections().run(
            lambda own: driver_sync.enqueue(PsycopgExecutor(own, own=True), spec),
            idempotent=spec.idempotency_key is not None,
        )

    async def enqueue_many(
        self, jobs: Iterable[JobSpec], *, conn: Any = None
    ) -> list[EnqueueResult]:
        """Enqueue many jobs in one transaction and one insert; results in input order.
        Build the jobs with ``task.job(...)`` or ``queue.build(...)``."""
        specs = _checked_specs(jobs)
        if not specs:
            return []
        if conn is not None:
            return await driver.enqueue_many(await async_executor_for(conn), specs)
        return await self._async_connections().run(
            lambda own: driver.enqueue_many(AsyncpgExecutor(own), specs),
            idempotent=_all_keyed(specs),
        )

    def enqueue_many_sync(
        self, jobs: Iterable[JobSpec], *, conn: Any = None
    ) -> list[EnqueueResult]:
        """The sync twin of :meth:`enqueue_many`."""
        specs = _checked_specs(jobs)
        if not specs:
            return []
        if conn is not None:
            return driver_sync.enqueue_many(sync_executor_for(conn), specs)
        return self._sync_connections().run(
            lambda own: driver_sync.enqueue_many(PsycopgExecutor(own, own=True), specs),
            idempotent=_all_keyed(specs),
        )

    # --- operations ---------------------------------------------------------------------

    async def cancel(self, job_id: int, *, conn: Any = None) -> JobState:
        """Cancel a queued or running job (a running one's worker is told at once);
        returns the state it was in. ``JobStateError`` if it has already finished,
        ``JobNotFoundError`` for an unknown id. Same as ``SELECT pgqueue.cancel_job(id)``."""
        job_id = validate_job_id(job_id)
        if conn is not None:
            return await driver.cancel(await async_executor_for(conn), job_id)
        return await self._async_connections().run(
            lambda own: driver.cancel(AsyncpgExecutor(own), job_id),
        )

    def cancel_sync(self, job_id: int, *, conn: Any = None) -> JobState:
        """The sync twin of :meth:`cancel`."""
        job_id = validate_job_id(job_id)
        if conn is not None:
            return driver_sync.cancel(sync_executor_for(conn), job_id)
        return self._sync_connections().run(
            lambda own: driver_sync.cancel(PsycopgExecutor(own, own=True), job_id),
        )

    async def retry(self, job_id: int, *, conn: Any = None) -> None:
        """Queue a failed or cancelled job again now, keeping its error history (one
        more attempt if it had used them all). Same as ``SELECT pgqueue.retry_job(id)``."""
        job_id = validate_job_id(job_id)
        if conn is not None:
            return await driver.retry(await async_executor_for(conn), job_id)
        return await self._async_connections().run(
            lambda own: driver.retry(AsyncpgExecutor(own), job_id),
        )

    def retry_sync(self, job_id: int, *, conn: Any = None) -> None:
        """The sync twin of :meth:`retry`."""
        job_id = validate_job_id(job_id)
        if conn is not None:
            return driver_sync.retry(sync_executor_for(conn), job_id)
        return self._sync_connections().run(
            lambda own: driver_sync.retry(PsycopgExecutor(own, own=True), job_id),
        )

    async def prune(self, retention: Retention | None = None) -> int:
        """Delete finished jobs older than ``retention`` (default: ``Retention()``), in
        batches of short transactions; returns how many went. Workers do this by
        themselves; this is for a cron job or a one-off clean-up. Same as
        ``SELECT pgqueue.prune_jobs(...)``."""
        params = (retention or Retention()).params(PRUNE_BATCH)
        total = 0
        while True:
            gone = await self._async_connections().run(
                lambda own: driver.prune(AsyncpgExecutor(own), params), idempotent=True
            )
            total += gone
            if gone < PRUNE_BATCH:
                return total

    def prune_sync(self, retention: Retention | None = None) -> int:
        """The sync twin of :meth:`prune`."""
        params = (retention or Retention()).params(PRUNE_BATCH)
        total = 0
        while True:
            gone = self._sync_connections().run(
                lambda own: driver_sync.prune(PsycopgExecutor(own, own=True), params),
                idempotent=True,
            )
            total += gone
            if gone < PRUNE_BATCH:
                return total

    async def pause(self, queue: str) -> None:
        """Pause a queue: workers claim nothing more from it (running jobs finish) until
        :meth:`resume`. Same as ``SELECT pgqueue.pause_queue(name)``."""
        name = validate_queue_name(queue)
        await self._async_connections().run(
            lambda own: driver.pause_queue(AsyncpgExecutor(own), name),
            idempotent=True,
        )

    def pause_sync(self, queue: str) -> None:
        name = validate_queue_name(queue)
        self._sync_connections().run(
            lambda own: driver_sync.pause_queue(PsycopgExecutor(own, own=True), name),
            idempotent=True,
        )

    async def resume(self, queue: str) -> None:
        """Resume a paused queue and wake its workers."""
        name = validate_queue_name(queue)
        await self._async_connections().run(
            lambda own: driver.resume_queue(AsyncpgExecutor(own), name),
            idempotent=True,
        )

    def resume_sync(self, queue: str) -> None:
        name = validate_queue_name(queue)
        self._sync_connections().run(
            lambda own: driver_sync.resume_queue(PsycopgExecutor(own, own=True), name),
            idempotent=True,
        )

    # --- inspection --------------------------------------------------------------------

    async def get_job(self, job_id: int, *, conn: Any = None) -> Job | None:
        job_id = validate_job_id(job_id)
        if conn is not None:
            return await driver.get_job(await async_executor_for(conn), job_id)
        return await self._async_connections().run(
            lambda own: driver.get_job(AsyncpgExecutor(own), job_id),
            idempotent=True,
        )

    async def queue_stats(self) -> list[QueueStats]:
        """Per queue: jobs in each state, the oldest claimable job's age, paused or not."""
        return await self._async_connections().run(
            lambda own: driver.queue_stats(AsyncpgExecutor(own)),
            idempotent=True,
        )

    def queue_stats_sync(self) -> list[QueueStats]:
        return self._sync_connections().run(
            lambda own: driver_sync.queue_stats(PsycopgExecutor(own, own=True)),
            idempotent=True,
        )

    def get_job_sync(self, job_id: int, *, conn: Any = None) -> Job | None:
        job_id = validate_job_id(job_id)
        if conn is not None:
            return driver_sync.get_job(sync_executor_for(conn), job_id)
        return self._sync_connections().run(
            lambda own: driver_sync.get_job(PsycopgExecutor(own, own=True), job_id),
            idempotent=True,
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

    async def close(self) -> None:
        """Close this loop's connections and the sync ones, and stop an embedded server
        this Queue started."""
        conns = self._async.pop(asyncio.get_running_loop(), None)
        if conns is not None:
            await conns.close()
        self.close_sync()

    def close_sync(self) -> None:
        with self._lock:
            sync, self._sync = self._sync, None
        if sync is not None:
            sync.close()
        if self._embedded is not None and not self._async:
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


def importable_module_name(func: Callable[..., Any]) -> str:
    """The name under which a worker imports ``func``'s module. A function defined in a
    script run as ``python app.py`` has ``__module__ == "__main__"``, while the worker,
    importing ``app:queue``, knows it as ``app``: such a task is named after the module
    the script would be imported as (``python -m pkg.app`` -> ``pkg.app``; ``python
    pkg/app.py`` with ``pkg/__init__.py`` -> ``pkg.app``), so that both sides agree."""
    module = str(func.__module__)
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and not spec.name.endswith("__main__"):
        return str(spec.name)
    path = getattr(main, "__file__", None)
    if not path:  # a REPL or notebook: nothing a worker could import
        structlog.get_logger("pgqueue").warning(
            "task_not_importable",
            task=func.__qualname__,
            hint="defined in an interactive session: a worker cannot import it; define it "
            "in a module, or pass name= and register the same name in the worker's app",
        )
        return module
    file = Path(path).resolve()
    parts = [file.stem]
    parent = file.parent
    while (parent / "__init__.py").exists():  # inside a package: its dotted name
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts)


def _all_keyed(specs: list[JobSpec]) -> bool:
    # Enqueueing again after a connection lost mid-statement is safe only when every
    # job has an idempotency key: a job that did get in is then found, not doubled.
    return all(spec.idempotency_key is not None for spec in specs)


def _checked_specs(jobs: Iterable[JobSpec]) -> list[JobSpec]:
    """The batch as a list of checked jobs; a bad item (or one that fails as it is built,
    when ``jobs`` is a generator) raises InvalidJobError naming its index."""
    specs: list[JobSpec] = []
    try:
        for spec in jobs:
            specs.append(check_spec(spec))  # noqa: PERF401 - len(specs) names a bad item
    except InvalidJobError as exc:
        index = len(specs)  # the item being built or checked when it failed
        raise InvalidJobError(f"item {index}: {exc}", field=exc.field, index=index) from exc
    return specs
