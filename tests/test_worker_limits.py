"""How many jobs a worker runs at once: up to ``concurrency`` in all, plain functions
(and transactional tasks) never more than ``threads``, and a worker whose tasks all
need a thread claims no more jobs than it can start."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

import psycopg
import pytest

import pgqueue
from pgqueue import JobState
from pgqueue.testing import running_worker, wait_for_job

if TYPE_CHECKING:
    from collections.abc import Callable


class Gauge:
    """How many calls are inside at once, and the most there ever were."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


async def until(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true in time")
        await asyncio.sleep(0.01)


def test_the_defaults_are_fast_for_async_tasks_and_modest_for_threads(queue):
    worker = pgqueue.Worker(queue)
    assert (worker.concurrency, worker.threads, worker.batch_size) == (200, 10, 100)
    # Never more threads than jobs in flight.
    assert pgqueue.Worker(queue, concurrency=4).threads == 4
    with pytest.raises(ValueError, match=r"threads must be between 1 and concurrency \(4\)"):
        pgqueue.Worker(queue, concurrency=4, threads=5)
    with pytest.raises(ValueError, match="threads must be between 1"):
        pgqueue.Worker(queue, threads=0)


async def test_plain_functions_never_outnumber_the_threads_while_async_jobs_fill_up(queue):
    in_threads, on_loop = Gauge(), Gauge()
    release_threads, release_loop = threading.Event(), asyncio.Event()

    @queue.task(name="blocking", queue="mixed")
    def blocking(i: int) -> int:
        in_threads.enter()
        try:
            release_threads.wait(30)
        finally:
            in_threads.leave()
        return i

    @queue.task(name="waiting", queue="mixed")
    async def waiting(i: int) -> int:
        on_loop.enter()
        try:
            await asyncio.wait_for(release_loop.wait(), 30)
        finally:
            on_loop.leave()
        return i

    async with running_worker(queue, concurrency=12, threads=3):
        # One commit, one claim of all twelve: every async job runs at once, and of the
        # plain functions three, the others waiting for a thread.
        specs = [blocking.job(i=i) for i in range(6)] + [waiting.job(i=i) for i in range(6)]
        ids = [job.id for job in await queue.enqueue_many(specs)]
        await until(lambda: on_loop.now == 6 and in_threads.now == 3)
        release_loop.set()
        release_threads.set()
        jobs = [await wait_for_job(queue, i, timeout=30) for i in ids]
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 12
    assert (in_threads.most, on_loop.most) == (3, 6)


async def test_a_plain_functions_deadline_starts_when_it_gets_its_thread(queue):
    @queue.task(name="nap", queue="naps", timeout=1.0, max_attempts=1)
    def nap() -> str:
        time.sleep(0.4)
        return "rested"

    # Four naps of 0.4 s, one thread: the last waits 1.2 s for it, past its timeout of
    # 1 s counted from the claim, but well within it counted from its start.
    async with running_worker(queue, concurrency=4, threads=1):
        ids = [(await nap.enqueue()).id for _ in range(4)]
        jobs = [await wait_for_job(queue, i, timeout=30) for i in ids]
    assert [(j.state, j.errors) for j in jobs] == [(JobState.SUCCEEDED, [])] * 4


async def test_a_worker_of_plain_functions_claims_no_more_than_it_can_start(dsn, queue):
    busy = Gauge()
    release = threading.Event()

    @queue.task(name="hold", queue="held")
    def hold(i: int) -> int:
        busy.enter()
        try:
            release.wait(30)
        finally:
            busy.leave()
        return i

    async with running_worker(queue, threads=2):  # concurrency: the default, 200
        ids = [(await hold.enqueue(i=i)).id for i in range(8)]
        await until(lambda: busy.now == 2)
        # The claim that started these two is the only one until a thread is free: the
        # six others stay queued, for any other worker to take.
        with psycopg.connect(dsn) as conn:
            states = dict(conn.execute("SELECT state::text, count(*) FROM pgqueue.jobs GROUP BY 1"))
        release.set()
        jobs = [await wait_for_job(queue, i, timeout=30) for i in ids]
    assert states == {"running": 2, "queued": 6}
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 8
    assert busy.most == 2


async def test_jobs_waiting_for_a_thread_go_back_at_once_when_the_worker_stops(dsn, queue):
    busy = Gauge()
    release = threading.Event()

    @queue.task(name="hold", queue="held", max_attempts=1)
    def hold(i: int) -> int:
        busy.enter()
        try:
            release.wait(30)
        finally:
            busy.leave()
        return i

    @queue.task(name="hop", queue="held")
    async def hop() -> None:
        """An async task on the same queue: the worker may hold four jobs at once."""

    def states() -> dict[str, int]:
        with psycopg.connect(dsn) as conn:
            return dict(conn.execute("SELECT state::text, count(*) FROM pgqueue.jobs GROUP BY 1"))

    async with running_worker(queue, concurrency=4, threads=1, grace_period=30) as worker:
        first, *waiting = [
            job.id for job in await queue.enqueue_many([hold.job(i=i) for i in range(3)])
        ]
        await until(lambda: busy.now == 1 and states() == {"running": 3})
        worker.stop()
        # The two that never got the thread are back in the queue while the first one
        # still runs, within its grace period.
        await until(lambda: states() == {"running": 1, "queued": 2})
        release.set()
        done = await wait_for_job(queue, first, timeout=30)
    assert done.state is JobState.SUCCEEDED
    for job_id in waiting:
        job = await queue.get_job(job_id)
        assert job is not None
        # As if never claimed: a job of one attempt is not lost to a stop.
        assert (job.state, job.attempts, job.errors) == (JobState.QUEUED, 0, [])
    assert worker.stats.released == 2
