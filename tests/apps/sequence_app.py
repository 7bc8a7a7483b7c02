"""A worker app for the sequence race: every run writes its own start and finish, by
the database's clock, to a ledger, and takes a little while in between."""

import asyncio
import os
import random

from ledger_pool import ledger

import pgqueue

queue = pgqueue.Queue()


@queue.task(name="sequence.step", queue="sequenced")
async def step(key: str, n: int) -> None:
    job = pgqueue.current_job()
    pool = await ledger()
    await pool.execute(
        "INSERT INTO ledger (job_id, key, n, pid, started) "
        "VALUES ($1, $2, $3, $4, clock_timestamp())",
        job.id,
        key,
        n,
        os.getpid(),
    )
    await asyncio.sleep(random.uniform(0, 0.02))  # jitter
    await pool.execute("UPDATE ledger SET finished = clock_timestamp() WHERE job_id = $1", job.id)
