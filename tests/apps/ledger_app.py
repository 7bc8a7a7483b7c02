"""A worker app for the multi-process race: every run writes a ledger row."""

import os

from ledger_pool import ledger

import pgqueue

queue = pgqueue.Queue()


@queue.task(name="ledger.record", queue="race")
async def record(n: int) -> None:
    pool = await ledger()
    await pool.execute("INSERT INTO ledger (n, pid) VALUES ($1, $2)", n, os.getpid())
