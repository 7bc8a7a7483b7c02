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
