"""A worker app whose tasks take a while, for shutdown tests."""

import asyncio
import os
import time

import pgqueue

queue = pgqueue.Queue()


@queue.task(name="slow.nap", queue="slow", max_attempts=3)
async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


@queue.task(name="slow.sync_nap", queue="slow", max_attempts=3)
def sync_nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


@queue.task(name="slow.whoami", queue="slow", max_attempts=3)
async def whoami(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()
