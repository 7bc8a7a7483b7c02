"""A worker app for the rolling-deploy test (tests/test_rolling_deploy.py), loaded by a
worker of the last release and by one of the current code alike: so it uses only what
both have. Every run writes a ledger row saying which process and which pgqueue ran it."""

import asyncio
import os
from pathlib import Path

import asyncpg

import pgqueue

queue = pgqueue.Queue()
# Where the pgqueue package this process imported lives: the release's or the checkout's.
CODE = str(Path(pgqueue.__file__).resolve().parent)
_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def _ledger() -> asyncpg.Pool:
    global _pool  # noqa: PLW0603 - one pool per worker process
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["LEDGER_DSN"], min_size=1, max_size=4)
    return _pool


@queue.task(name="rolling.record", queue="rolling")
async def record(n: int) -> None:
    # A job that takes a moment, so that some are running while the schema changes.
    await asyncio.sleep(0.02)
    pool = await _ledger()
    await pool.execute(
        "INSERT INTO ledger (n, pid, code) VALUES ($1, $2, $3)", n, os.getpid(), CODE
    )
