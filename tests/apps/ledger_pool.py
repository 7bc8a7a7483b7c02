"""The ledger connection pool the race, fault and deploy apps write their runs to: one
per worker process, opened on first use from ``LEDGER_DSN``."""

import asyncio
import os

import asyncpg

_pool: asyncpg.Pool | None = None
_pool_lock = asyncio.Lock()


async def ledger(max_size: int = 4) -> asyncpg.Pool:
    global _pool  # noqa: PLW0603 - one pool per worker process
    async with _pool_lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(
                os.environ["LEDGER_DSN"], min_size=1, max_size=max_size
            )
    return _pool
