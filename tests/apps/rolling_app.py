"""A worker app for the rolling-deploy test (tests/test_rolling_deploy.py), loaded by a
worker of the last release and by one of the current code alike: so it uses only what
both have. Every run writes a ledger row saying which process and which pgqueue ran it."""

import asyncio
import os
from pathlib import Path

from ledger_pool import ledger

import pgqueue

queue = pgqueue.Queue()
# Where the pgqueue package this process imported lives: the release's or the checkout's.
CODE = str(Path(pgqueue.__file__).resolve().parent)


@queue.task(name="rolling.record", queue="rolling")
async def record(n: int) -> None:
    # A job that takes a moment, so that some are running while the schema changes.
    await asyncio.sleep(0.02)
    pool = await ledger()
    await pool.execute(
        "INSERT INTO ledger (n, pid, code) VALUES ($1, $2, $3)", n, os.getpid(), CODE
    )
