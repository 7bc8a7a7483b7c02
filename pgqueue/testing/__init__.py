"""Helpers for testing code that uses pgqueue (pgqueue's own tests use them too).

Against a real database, with a real worker::

    async with running_worker(queue, concurrency=4) as worker:
        result = await my_task.enqueue(x=1)
        job = await wait_for_job(queue, result.id)
        assert job.state is JobState.SUCCEEDED

    await my_task.enqueue(x=1)
    await drain(queue)          # run every job due until none is left; drain_sync too

Without a database (:mod:`pgqueue.inline`: each job runs inside its enqueue)::

    with inline(app_queue) as jobs:
        await my_task.enqueue(x=1)
        assert jobs.of_task(my_task)[0].state is JobState.SUCCEEDED

The pytest plugin (:mod:`pgqueue.testing.plugin`, registered by pgqueue's ``pytest11``
entry point) gives these as fixtures, on a migrated database of each test's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pgqueue.errors import InlineModeError
from pgqueue.inline import InlineJobs
from pgqueue.states import TERMINAL_STATES, JobState
from pgqueue.worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from pgqueue.app import Queue
    from pgqueue.jobs import Job
    from pgqueue.worker.core import WorkerStats

__all__ = [
    "DrainTimeoutError",
    "InlineJobs",
    "InlineModeError",
    "drain",
    "drain_sync",
    "inline",
    "running_worker",
    "use_database",
    "wait_for_job",
]

# How often drain() looks whether work is left (one read of pgqueue.queue_stats).
DRAIN_POLL_SECONDS = 0.02


class DrainTimeoutError(TimeoutError):
    """:func:`drain` found jobs still due or running after its timeout."""


async def wait_for_job(
    queue: Queue,
    job_id: int,
    states: frozenset[JobState] = TERMINAL_STATES,
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
) -> Job:
    """Wait until the job is in one of ``states`` (by default any terminal state) and
    return it; ``TimeoutError`` naming the last state seen after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = await queue.get_job(job_id)
        if job is not None and job.state in states:
            return job
        await asyncio.sleep(interval)
    seen = "missing" if job is None else job.state.value
    raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout}s (state: {seen})")


@asynccontextmanager
async def running_worker(
    queue: Queue, *, ready_timeout: float = 10.0, **worker_options: Any
) -> AsyncIterator[Worker]:
    """Run a Worker in the background of the current loop; stop it (gracefully) and
    wait for it on exit. Yields once the worker is listening for wake-ups."""
    worker = Worker(queue, **worker_options)
    task = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + ready_timeout
        while worker.listening is None or not worker.listening.is_set():
            if task.done():
                task.result()  # raise the worker's start-up error
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not start listening")
            await asyncio.sleep(0.005)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=worker.grace_period + 15.0)


async def drain(
    queue: Queue, *, timeout: float = 30.0, scheduler: bool = False, **worker_options: Any
) -> WorkerStats:
    """Run a real worker until no job of its queues (by default the queue's tasks'
    queues; ``queues=[...]`` to choose) is due or running, then stop it; its counts
    (``succeeded``, ``failed``, ``retried``...). Jobs enqueued by the jobs it runs are
    run too. Jobs not yet due (``delay``, ``run_at``, a retry's backoff, a snooze) and
    the jobs of a paused queue are left queued: give a task ``retry=RetryPolicy(base=0,
    jitter=0)`` to have its retries run within the drain. ``DrainTimeoutError`` if
    work is still left after ``timeout`` seconds. The scheduler of periodic jobs is off
    unless ``scheduler=True``; other options go to :class:`~pgqueue.Worker`."""
    deadline = time.monotonic() + timeout
    async with running_worker(queue, scheduler=scheduler, **worker_options) as worker:
        served = set(worker.queues)
        while True:
            busy = [
                s
                for s in await queue.queue_stats()
                if s.queue in served and (s.running or (s.claimable and not s.paused))
            ]
            if not busy:
                return worker.stats
            if time.monotonic() > deadline:
                left = ", ".join(f"{s.queue}: {s.claimable} due, {s.running} running" for s in busy)
                raise DrainTimeoutError(f"jobs still to run after {timeout:g} s ({left})")
            await asyncio.sleep(DRAIN_POLL_SECONDS)


def drain_sync(
    queue: Queue, *, timeout: float = 30.0, scheduler: bool = False, **worker_options: Any
) -> WorkerStats:
    """:func:`drain` from sync code (a test without an event loop, or one calling it
    from a sync helper): the worker runs on an event loop of its own, in a thread, for
    the call. Connections that loop opened are closed before it returns."""

    async def run() -> WorkerStats:
        try:
            return await drain(queue, timeout=timeout, scheduler=scheduler, **worker_options)
        finally:
            await queue._close_loop_connections()  # noqa: SLF001 - the loop ends here

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgqueue-drain") as pool:
        return pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def inline(queue: Queue) -> Iterator[InlineJobs]:
    """Put ``queue`` (your app's Queue, with its tasks) in inline mode for the block:
    each job runs inside its enqueue and is kept in memory, in the store yielded (see
    :mod:`pgqueue.inline`); no database is used. Its own mode, database and connections
    are back after the block. ``Queue(inline=True)`` makes a Queue that is always inline."""
    jobs = InlineJobs()
    with queue._retargeted(dsn=None, inline=jobs):  # noqa: SLF001
        yield jobs


@contextlib.contextmanager
def use_database(queue: Queue, dsn: str) -> Iterator[Queue]:
    """Point ``queue`` (your app's Queue, with its tasks) at the database ``dsn`` for
    the block, with connections of its own that are closed at its end; its own DSN and
    connections are back after. The pytest plugin's ``pgqueue_queue`` fixture does this
    with a fresh database for each test."""
    with queue._retargeted(dsn=dsn, inline=None):  # noqa: SLF001
        yield queue
