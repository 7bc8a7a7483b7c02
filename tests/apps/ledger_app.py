"""A worker app for the multi-process race: every run writes a ledger row."""

import asyncio
import os

import asyncpg

import pgqueue

queue = pgqueue.Queue()
_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _ledger() -> asyncpg.Pool:
    global _pool  # noqa: PLW0603 - one pool per worker process
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["LEDGER_DSN"], min_size=1, max_size=4)
    return _pool


@queue.task(name="ledger.record", queue="race")
async def record(n: int) -> None:
    pool = await _ledger()
    await pool.execute("INSERT INTO ledger (n, pid) VALUES ($1, $2)", n, os.getpid())
