"""A worker app for the flow-control races: every run of a job writes its own start
and finish, by the database's clock, to a ledger (one row per attempt)."""

import asyncio
import os

from ledger_pool import ledger

import pgqueue

queue = pgqueue.Queue()
# Declared in code: each worker writes these as it starts.
queue.limit("flow", concurrency=4, key_concurrency=2)
queue.limit("rated", rate="20/2s")


@queue.task(name="flow.work", queue="flow")
async def work(n: int, key: str, seconds: float) -> None:
    pool = await ledger(max_size=8)
    ctx = pgqueue.current_job()
    row_id = await pool.fetchval(
        "INSERT INTO ledger (job_id, key, pid, started_at) "
        "VALUES ($1, $2, $3, clock_timestamp()) RETURNING id",
        ctx.id,
        key,
        os.getpid(),
    )
    await asyncio.sleep(seconds)
    await pool.execute("UPDATE ledger SET finished_at = clock_timestamp() WHERE id = $1", row_id)


@queue.task(name="flow.noop", queue="rated")
async def noop() -> None:
    return None
