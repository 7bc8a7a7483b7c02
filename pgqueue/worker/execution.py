"""How a job's function is called: on the event loop, in a thread, or in a process of
its own; under its deadline; and, for a transactional task, inside the transaction that
marks its job succeeded.

- Async tasks run on the worker's loop; at the deadline they are cancelled.
- Plain functions run in the worker's thread pool. No one can stop a thread from the
  outside, so at the deadline the job's ``cancel_requested()`` flag is set and a
  :class:`~pgqueue.JobTimeoutError` is raised asynchronously inside the thread (it lands at
  the function's next Python bytecode; code blocked in a C call sees it when the call
  returns). The attempt is recorded only once the thread has let go, so a retry never
  runs beside the attempt it replaces.
- Tasks registered with ``process=True`` run in a pool of worker processes (pebble's),
  where the deadline really ends the work: the process is killed and replaced. This is
  also the mode for CPU-bound functions, which would hold the GIL in a thread.

Async tasks are limited only by the worker's concurrency. The rest wait for a slot
first: plain functions and transactional tasks for one of ``threads`` (a thread, or a
connection of the transaction pools), process tasks for one of ``processes``. A job's
deadline starts once it has its slot, and the slot comes back when the thread or
process has let go, not when the job stopped waiting for it: a pool never runs more
calls than its size, and none queue inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import functools
import importlib
import multiprocessing
import threading
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg_pool
import structlog
from pebble import ProcessPool

from pgqueue import driver
from pgqueue.connect import asyncpg_pool, psycopg_connect_args
from pgqueue.context import RunningJob, enter_job
from pgqueue.dberrors import DATABASE_ERRORS, TRANSIENT_ERRORS, connection_failed
from pgqueue.errors import JobTimeoutError
from pgqueue.executors import AsyncpgExecutor, PsycopgExecutor
from pgqueue.pools import acquire
from pgqueue.worker import transaction, transaction_sync
from pgqueue.worker.outcome import CommitOutcomeUnknownError, Ran, encode_result
from pgqueue.worker.steps import PoolSteps, SyncTransactionSteps, TransactionSteps

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from concurrent.futures import Executor, Future

    import asyncpg

    from pgqueue.jobs import ClaimedJob
    from pgqueue.tasks import Task


def timeout_error(seconds: float) -> JobTimeoutError:
    return JobTimeoutError(f"the attempt ran longer than its timeout of {seconds:g} s")


class ProgressWriter:
    """Progress reports of running jobs, written through the worker's pool."""

    def __init__(self, pool: asyncpg.Pool[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._log = structlog.get_logger("pgqueue.worker")
        self.steps = PoolSteps(pool, loop)  # durable steps of tasks not transactional

    async def report(self, job: RunningJob, progress_json: str) -> None:
        try:
            async with acquire(self._pool) as conn:
                current = await driver.set_progress(
                    AsyncpgExecutor(conn), job.id, job.attempt, progress_json
                )
        except DATABASE_ERRORS as exc:
            # Progress is a courtesy to onlookers: losing one report must not fail the job.
            self._log.warning("progress_write_failed", job_id=job.id, error=repr(exc))
            return
        if not current:
            self._log.info("progress_ignored", job_id=job.id, reason="attempt not running")

    def report_sync(self, job: RunningJob, progress_json: str) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            raise RuntimeError("in an async task, use `await current_job().set_progress(...)`")
        asyncio.run_coroutine_threadsafe(self.report(job, progress_json), self._loop).result(60)


class TaskRunner:
    """The worker's means of running jobs: its thread pool, and the process pool and
    transaction pools that it opens the first time a task needs one."""

    def __init__(
        self, dsn: str, *, threads: Executor, thread_count: int, processes: int, lease: float
    ) -> None:
        self._dsn = dsn
        self._lease = lease
        self._threads = threads
        self._thread_count = thread_count
        self._process_count = processes
        self._thread_slots = asyncio.Semaphore(thread_count)
        self._process_slots = asyncio.Semaphore(processes)
        self._loop = asyncio.get_running_loop()
        # Jobs waiting for a slot, which have not started; ``unblocked`` is set whenever
        # none is (the claim loop takes no more jobs while some wait).
        self.waiting: set[int] = set()
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        self._processes: ProcessPool | None = None
        self._async_pool: asyncpg.Pool[Any] | None = None
        self._async_pool_lock = asyncio.Lock()
        self._sync_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._sync_pool_lock = threading.Lock()

    async def run(
        self, task: Task[Any, Any], job: ClaimedJob, running: RunningJob, worker_id: str
    ) -> Ran:
        """Call the job's function; the ``Ran`` it returned, or the exception it raised
        (:class:`~pgqueue.JobTimeoutError` past its deadline)."""
        timeout = job.timeout if job.timeout is not None else task.timeout
        enter_job(running)  # this asyncio task's own context
        if task.transactional:
            if task.is_async:
                await self._take(self._thread_slots, job.id)
                try:
                    return await self._run_transactional(task, job, running, worker_id, timeout)
                finally:
                    self._thread_slots.release()
            call = functools.partial(self._run_transactional_sync, task, job, running, worker_id)
            ran: Ran = await self._in_thread(call, running, timeout)
            return ran
        if task.is_async:
            value = await _with_deadline(task.fn(**job.args), timeout)
        elif task.process:
            value = await self._in_process(task, job, running, timeout)
        else:
            value = await self._in_thread(functools.partial(task.fn, **job.args), running, timeout)
        return Ran(encode_result(value))

    # --- slots ---------------------------------------------------------------------------

    async def _take(self, slots: asyncio.Semaphore, job_id: int) -> None:
        if not slots.locked():
            await slots.acquire()  # at once
            return
        self.waiting.add(job_id)
        self.unblocked.clear()
        try:
            await slots.acquire()
        finally:
            self.waiting.discard(job_id)
            if not self.waiting:
                self.unblocked.set()

    def _give_back_when_done(self, slots: asyncio.Semaphore, future: Future[Any]) -> None:
        """Give the slot back once the call has let go of its thread or process (a job
        cancelled meanwhile stops waiting for it at once, the call does not)."""

        def done(_: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to give to
                self._loop.call_soon_threadsafe(slots.release)

        future.add_done_callback(done)

    # --- threads -------------------------------------------------------------------------

    async def _in_thread(
        self, fn: Callable[[], Any], running: RunningJob, timeout: float | None
    ) -> Any:
        await self._take(self._thread_slots, running.id)
        call = _ThreadCall(fn, contextvars.copy_context())
        try:
            submitted = self._threads.submit(call.run)
        except BaseException:
            self._thread_slots.release()
            raise
        self._give_back_when_done(self._thread_slots, submitted)
        future = asyncio.wrap_future(submitted)
        if timeout is None:
            return await future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            running.request_cancel()
            call.interrupt()
            # Wait for the thread to let go: a retry must not run beside this attempt.
            with contextlib.suppress(Exception):
                await future
            raise timeout_error(timeout) from None

    # --- processes -----------------------------------------------------------------------

    async def _in_process(
        self, task: Task[Any, Any], job: ClaimedJob, running: RunningJob, timeout: float | None
    ) -> Any:
        if self._processes is None:
            # forkserver: a clean process to fork from, not this one with its threads
            # and connections. Children import the task's module on their first job.
            context = multiprocessing.get_context("forkserver")
            self._processes = ProcessPool(self._process_count, context=context)
        await self._take(self._process_slots, running.id)
        try:
            future = self._processes.schedule(
                call_in_process,
                args=(task.fn.__module__, task.fn.__qualname__, job.args, running.fields()),
                timeout=timeout,
            )
        except BaseException:
            self._process_slots.release()
            raise
        self._give_back_when_done(self._process_slots, future)
        try:
            # Cancelling this await (a cancelled job, a stop) cancels the pebble future,
            # which ends the process running it.
            return await asyncio.wrap_future(future)
        except TimeoutError:
            if timeout is None:
                raise
            raise timeout_error(timeout) from None

    # --- transactional tasks -------------------------------------------------------------

    async def _run_transactional(
        self,
        task: Task[Any, Any],
        job: ClaimedJob,
        running: RunningJob,
        worker_id: str,
        timeout: float | None,
    ) -> Ran:
        pool = await self._transaction_pool()
        conn = await pool.acquire()
        try:
            try:
                async with conn.transaction():
                    running.use_transaction(TransactionSteps(AsyncpgExecutor(conn)))
                    value = await _with_deadline(task.fn(conn, **job.args), timeout)
                    ran = await transaction.mark_succeeded(
                        AsyncpgExecutor(conn),
                        job,
                        value,
                        worker_id=worker_id,
                        idle_limit=self._lease,
                    )
            except BaseException as exc:
                if not _connection_left_sound(exc) or conn.is_closed():
                    conn.terminate()  # mid-operation or gone: never back into the pool
                    if connection_failed(exc):
                        raise CommitOutcomeUnknownError(repr(exc)) from exc
                raise
        finally:
            await pool.release(conn)
        return ran

    def _run_transactional_sync(
        self, task: Task[Any, Any], job: ClaimedJob, running: RunningJob, worker_id: str
    ) -> Ran:
        pool = self._transaction_pool_sync()
        try:
            with pool.connection() as conn, conn.transaction():
                running.use_transaction(SyncTransactionSteps(PsycopgExecutor(conn)))
                value = task.fn(conn, **job.args)
                ran = transaction_sync.mark_succeeded(
                    PsycopgExecutor(conn), job, value, worker_id=worker_id, idle_limit=self._lease
                )
        except psycopg.Error as exc:
            # The pool discards a broken connection by itself. A statement the server
            # refused (a deadlock) is the task's own failure, rolled back.
            if connection_failed(exc):
                raise CommitOutcomeUnknownError(repr(exc)) from exc
            raise
        return ran

    async def _transaction_pool(self) -> asyncpg.Pool[Any]:
        async with self._async_pool_lock:
            if self._async_pool is None:
                # Apart from the worker's own pool: a transactional task holds its
                # connection for as long as it runs, and must not starve the claims.
                self._async_pool = await asyncpg_pool(
                    self._dsn, min_size=0, max_size=self._thread_count
                )
            return self._async_pool

    def _transaction_pool_sync(self) -> psycopg_pool.ConnectionPool[Any]:
        with self._sync_pool_lock:
            if self._sync_pool is None:
                self._sync_pool = psycopg_pool.ConnectionPool(
                    self._dsn,
                    min_size=0,
                    max_size=self._thread_count,
                    kwargs=psycopg_connect_args(self._dsn),
                    open=True,
                )
            return self._sync_pool

    # --- shutdown ------------------------------------------------------------------------

    async def close(self, *, kill: bool) -> None:
        """Close the pools; with ``kill``, end processes still running jobs."""
        if self._processes is not None:
            # pebble is untyped: stop() ends the processes at once, close() lets them finish.
            if kill:
                self._processes.stop()  # type: ignore[no-untyped-call]
            else:
                self._processes.close()  # type: ignore[no-untyped-call]
            await asyncio.to_thread(self._processes.join, 10)
        if self._async_pool is not None:
            await self._async_pool.close()
        if self._sync_pool is not None:
            await asyncio.to_thread(self._sync_pool.close, 10)


_MAY_STRIKE_MID_QUERY: tuple[type[BaseException], ...] = (
    TimeoutError,
    JobTimeoutError,
    *TRANSIENT_ERRORS,
)


def _connection_left_sound(exc: BaseException) -> bool:
    # A task's own exception leaves its connection idle in the aborted transaction,
    # which the rollback ends. A cancellation or a deadline may have struck mid-query.
    return isinstance(exc, Exception) and not isinstance(exc, _MAY_STRIKE_MID_QUERY)


async def _with_deadline(call: Awaitable[Any], timeout: float | None) -> Any:
    if timeout is None:
        return await call
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        raise timeout_error(timeout) from None


class _ThreadCall:
    """A function run in a pool thread, which can be interrupted by an exception raised
    asynchronously in that thread (CPython's ``PyThreadState_SetAsyncExc``)."""

    def __init__(self, fn: Callable[[], Any], context: contextvars.Context) -> None:
        self._fn = fn
        self._context = context
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._interrupted = False

    def run(self) -> Any:
        with self._lock:
            self._thread_id = threading.get_ident()
        try:
            return self._context.run(self._fn)
        finally:
            with self._lock:
                if self._interrupted:
                    # Withdraw an exception not yet delivered, so it cannot strike the
                    # pool's own code once this function has returned.
                    _set_async_exc(self._thread_id, None)
                self._thread_id = None

    def interrupt(self) -> None:
        with self._lock:
            if self._thread_id is not None:
                self._interrupted = True
                _set_async_exc(self._thread_id, JobTimeoutError)


def _set_async_exc(thread_id: int | None, exc_type: type[BaseException] | None) -> None:
    if thread_id is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


def call_in_process(
    module: str, qualname: str, kwargs: dict[str, Any], job: tuple[Any, ...]
) -> Any:
    """Run in a pool process: find the task's function by name (functions travel to
    processes by reference) and call it as the given job."""
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    fn = getattr(target, "fn", target)  # the module attribute is usually the Task
    enter_job(RunningJob(*job))
    return fn(**kwargs)
