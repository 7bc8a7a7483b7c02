"""Helpers for testing code that uses pgqueue (pgqueue's own tests use them too).

async with running_worker(queue, concurrency=4) as worker:
    result = await my_task.enqueue(x=1)
    job = await wait_for_job(queue, result.id)
    assert job.state is JobState.SUCCEEDED
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pgqueue.states import TERMINAL_STATES, JobState
from pgqueue.worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pgqueue.app import Queue
    from pgqueue.jobs import Job


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
