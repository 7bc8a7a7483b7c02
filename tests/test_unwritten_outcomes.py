"""A worker whose outcome writes fall behind stops claiming: the outcomes waiting to be
written are bounded (Claimer.max_unwritten), not the backlog. Before that bound a soak
with a stuck write had a worker claim 450,000 jobs, all ``running`` in the database
while their outcomes piled up in its memory."""

from __future__ import annotations

import asyncio

import psycopg
import structlog
from faultkit import wait_until_async

import pgqueue
from pgqueue.testing import running_worker

BACKLOG = 4_000
BOUND = 60.0


def count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


async def test_claims_wait_while_too_many_outcomes_are_unwritten(dsn: str) -> None:
    """The first job's row is locked by another session once it ran, so the write of
    its outcome (and the batch it rides in) waits on the lock, as on a slow disk. The
    worker claims until max_unwritten outcomes wait, then waits for the writes; once
    the lock goes, everything is written and the backlog drains."""
    queue = pgqueue.Queue(dsn)
    holder = await psycopg.AsyncConnection.connect(dsn)
    locked = asyncio.Event()

    @queue.task(name="lock_own_row", queue="backpressure", priority=10)
    async def lock_own_row() -> None:
        job_id = pgqueue.current_job().id
        await holder.execute("SELECT FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (job_id,))
        locked.set()

    @queue.task(name="noop", queue="backpressure")
    async def noop() -> None:
        pass

    try:
        await queue.enqueue("lock_own_row", {})
        await queue.enqueue_many([queue.build("noop", {}) for _ in range(BACKLOG)])
        with structlog.testing.capture_logs() as logs:
            async with running_worker(queue, queues=["backpressure"], batch_size=100) as worker:
                await asyncio.wait_for(locked.wait(), BOUND)
                await wait_until_async(
                    "claims_waiting_for_writes",
                    lambda: any(e["event"] == "claims_waiting_for_writes" for e in logs),
                    BOUND,
                )
                [waiting] = [e for e in logs if e["event"] == "claims_waiting_for_writes"]
                limit = waiting["limit"]
                # The defaults: max(1,000, 10 x batch_size, 2 x concurrency).
                assert limit == max(1_000, 10 * 100, 2 * worker.concurrency)
                # Every job the worker claimed is still running in the database: what
                # it ran waits to be written. Bounded by the limit, a batch in flight
                # and the jobs running, far below the backlog.
                running = count(dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state = 'running'")
                assert running <= limit + 100 + worker.concurrency, running
                assert running < BACKLOG
                await holder.rollback()  # the lock goes: the writes go through
                await wait_until_async(
                    "the backlog drained",
                    lambda: (
                        count(dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state <> 'succeeded'")
                        == 0
                    ),
                    BOUND,
                )
    finally:
        await holder.close()
        await queue.close()
