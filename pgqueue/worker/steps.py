"""Where a worker's jobs keep their durable steps (:mod:`pgqueue.steps`): the worker's
own pool, or a transactional task's connection, inside its transaction."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

from pgqueue import driver, driver_sync
from pgqueue.dberrors import connection_failed
from pgqueue.errors import PgQueueError
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire
from pgqueue.worker.outcome import OwnershipLostError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg

    from pgqueue.executors import AsyncExecutor, SyncExecutor

T = TypeVar("T")

# A read or write through the worker's pool whose connection failed is made again, up
# to this many tries in all.
_TRIES = 3
# How long a plain function's thread waits for a read or write made on the worker's
# loop (as for progress reports).
_SYNC_WAIT = 60.0
_ASYNC_TRANSACTION = "this transactional task is async: use `await current_job().step(...)`"
_SYNC_TRANSACTION = (
    "this transactional task is a plain function: use `current_job().step_sync(...)`"
)


class JobLostError(OwnershipLostError, PgQueueError):
    """A step finished, but its attempt no longer holds the job: it was rescued (the
    worker lost its lease) or cancelled while the step ran. Nothing was recorded; the
    exception stops the task, and the worker writes no outcome for the attempt (the
    job's next attempt, if any, runs the step again). Let it propagate."""


def _lost(job_id: int, attempt: int, name: str) -> JobLostError:
    return JobLostError(
        f"step {name!r} of job {job_id} finished, but attempt {attempt} no longer holds "
        "the job (rescued or cancelled meanwhile): its result was not recorded"
    )


async def _record(ex: AsyncExecutor, job_id: int, attempt: int, name: str, result: str) -> str:
    owned, stored = await driver.record_step(ex, job_id, attempt, name, result)
    if not owned:
        raise _lost(job_id, attempt, name)
    if stored is None:
        # Recorded meanwhile by a transaction this statement's snapshot did not see.
        stored = (await driver.load_steps(ex, job_id)).get(name, result)
    return stored


def _record_sync(ex: SyncExecutor, job_id: int, attempt: int, name: str, result: str) -> str:
    owned, stored = driver_sync.record_step(ex, job_id, attempt, name, result)
    if not owned:
        raise _lost(job_id, attempt, name)
    if stored is None:
        stored = driver_sync.load_steps(ex, job_id).get(name, result)
    return stored


class PoolSteps:
    """Steps of a job that is not transactional, through the worker's pool, each
    record committed at once. The sync calls (``step_sync`` in a thread) and calls from
    an event loop other than the worker's (``asyncio.run`` inside a plain task) are
    run on the worker's loop."""

    def __init__(self, pool: asyncpg.Pool[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop

    async def load(self, job_id: int) -> dict[str, str]:
        return await self._on_loop(lambda: self._load(job_id))

    async def save(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        return await self._on_loop(lambda: self._save(job_id, attempt, name, result_json))

    def load_sync(self, job_id: int) -> dict[str, str]:
        return self._from_thread(lambda: self._load(job_id))

    def save_sync(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        return self._from_thread(lambda: self._save(job_id, attempt, name, result_json))

    async def _load(self, job_id: int) -> dict[str, str]:
        return await self._retrying(lambda ex: driver.load_steps(ex, job_id))

    async def _save(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        return await self._retrying(lambda ex: _record(ex, job_id, attempt, name, result_json))

    async def _retrying(self, op: Callable[[AsyncExecutor], Awaitable[T]]) -> T:
        # Both operations may run again: a read, and a write that keeps a record
        # already written.
        tried = 0
        while True:
            tried += 1
            try:
                async with acquire(self._pool) as conn:
                    return await op(AsyncpgExecutor(conn))
            except Exception as exc:
                if tried >= _TRIES or not connection_failed(exc):
                    raise
            await asyncio.sleep(0.2 * tried)

    async def _on_loop(self, make: Callable[[], Awaitable[T]]) -> T:
        if asyncio.get_running_loop() is self._loop:
            return await make()
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_awaited(make), self._loop)
        )

    def _from_thread(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # it would wait for the loop it blocks
            raise RuntimeError("in an async task, use `await current_job().step(...)`")
        future = asyncio.run_coroutine_threadsafe(_awaited(make), self._loop)
        return future.result(_SYNC_WAIT)


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


class TransactionSteps:
    """Steps of an async transactional task: on its asyncpg connection, inside its
    transaction (they commit with its writes, or roll back with them)."""

    def __init__(self, ex: AsyncExecutor) -> None:
        self._ex = ex

    async def load(self, job_id: int) -> dict[str, str]:
        return await driver.load_steps(self._ex, job_id)

    async def save(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        return await _record(self._ex, job_id, attempt, name, result_json)

    def load_sync(self, *_: object) -> dict[str, str]:
        raise RuntimeError(_ASYNC_TRANSACTION)

    def save_sync(self, *_: object) -> str:
        raise RuntimeError(_ASYNC_TRANSACTION)


class SyncTransactionSteps:
    """Steps of a plain transactional task: on its psycopg connection, inside its
    transaction, from the task's own thread."""

    def __init__(self, ex: SyncExecutor) -> None:
        self._ex = ex

    async def load(self, *_: object) -> dict[str, str]:
        raise RuntimeError(_SYNC_TRANSACTION)

    async def save(self, *_: object) -> str:
        raise RuntimeError(_SYNC_TRANSACTION)

    def load_sync(self, job_id: int) -> dict[str, str]:
        return driver_sync.load_steps(self._ex, job_id)

    def save_sync(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        return _record_sync(self._ex, job_id, attempt, name, result_json)
