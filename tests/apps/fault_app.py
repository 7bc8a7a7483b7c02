"""A worker app for fault injection: every run writes a ledger row with when it ran, so
the tests can tell whether a job ran, how often, and whether two runs overlapped."""

import asyncio
import os
import random

import asyncpg
from ledger_pool import ledger

import pgqueue

queue = pgqueue.Queue()


@queue.task(name="fault.work", queue="faults", max_attempts=20)
async def work(n: int, pause: float = 0.0) -> int:
    started = await (await ledger()).fetchval("SELECT clock_timestamp()")
    await asyncio.sleep(random.uniform(0, 0.01) + pause)
    job = pgqueue.current_job()
    await (await ledger()).execute(
        "INSERT INTO ledger (n, job_id, attempt, pid, started, finished) "
        "VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
        n,
        job.id,
        job.attempt,
        os.getpid(),
        started,
    )
    return n


@queue.task(name="fault.tx", queue="faults", max_attempts=20, transactional=True)
async def tx(conn: asyncpg.Connection, n: int, pause: float = 0.0) -> int:
    """The ledger row is written in the transaction that completes the job: it exists
    exactly once for a succeeded job, however often the job ran."""
    job = pgqueue.current_job()
    started = await conn.fetchval("SELECT clock_timestamp()")
    await asyncio.sleep(random.uniform(0, 0.01) + pause)
    await conn.execute(
        "INSERT INTO ledger (n, job_id, attempt, pid, started, finished, tx) "
        "VALUES ($1, $2, $3, $4, $5, clock_timestamp(), true)",
        n,
        job.id,
        job.attempt,
        os.getpid(),
        started,
    )
    return n


@queue.task(name="fault.long", queue="faults", max_attempts=20)
async def long(n: int, pause: float) -> int:
    """A run recorded from its start (tests/test_failover.py's ledger, which has an id and
    ``given_up``): its row is written first and finished when the run returns or is
    given up (cancelled by the worker), so that two runs of one job can be seen to
    overlap however the first one ended. A run that never finishes its row (a worker
    killed) counts as running for good."""
    job = pgqueue.current_job()
    db = await ledger()
    run_id = await db.fetchval(
        "INSERT INTO ledger (n, job_id, attempt, pid, started) "
        "VALUES ($1, $2, $3, $4, clock_timestamp()) RETURNING id",
        n,
        job.id,
        job.attempt,
        os.getpid(),
    )
    given_up = True
    try:
        await asyncio.sleep(pause)
        given_up = False
    finally:
        # Also when cancelled: the end of a run given up is when it stopped.
        await db.execute(
            "UPDATE ledger SET finished = clock_timestamp(), given_up = $2 WHERE id = $1",
            run_id,
            given_up,
        )
    return n
