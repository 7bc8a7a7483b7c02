"""A worker app for the flow-control races: every run of a job writes its own start
and finish, by the database's clock, to a ledger (one row per attempt)."""

import asyncio
import os

import asyncpg

import pgqueue

queue = pgqueue.Queue()
# Declared in code: each worker writes these as it starts.
queue.limit("flow", concurrency=4, key_concurrency=2)
queue.limit("rated", rate="20/2s")

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _ledger() -> asyncpg.Pool:
    global _pool  # noqa: PLW0603 - one pool per worker process
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["LEDGER_DSN"], min_size=1, max_size=8)
    return _pool


@queue.task(name="flow.work", queue="flow")
async def work(n: int, key: str, seconds: float) -> None:
    pool = await _ledger()
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
