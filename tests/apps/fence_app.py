"""A worker app for the self-fencing tests (tests/test_hosts.py): each run of a job
records, in a file of its own on this machine (under $FENCE_LEDGER), when it started
and then, every few hundredths of a second, that it is still running, until it ends
however it ends (cancelled, or its process killed: then the ticks just stop). Written
locally, not to the database, so that a run cut off from the database still says how
long it ran."""

import asyncio
import os
import time
from pathlib import Path

import pgqueue

queue = pgqueue.Queue()
TICK = 0.05


def _ledger(kind: str) -> Path:
    job = pgqueue.current_job()
    name = f"{job.id}-{job.attempt}-{kind}-{os.getpid()}-{time.monotonic_ns()}"
    return Path(os.environ["FENCE_LEDGER"]) / name


def _tick(path: Path) -> None:
    with path.open("a") as f:
        f.write(f"{time.time()}\n")


@queue.task(name="fence.nap", queue="fence", max_attempts=20)
async def nap(pause: float) -> None:
    path = _ledger("async")
    end = time.monotonic() + pause
    while True:
        _tick(path)
        if time.monotonic() >= end:
            return
        await asyncio.sleep(TICK)


@queue.task(name="fence.proc_nap", queue="fence", max_attempts=20, process=True)
def proc_nap(pause: float) -> None:
    path = _ledger("process")
    end = time.monotonic() + pause
    while True:
        _tick(path)
        if time.monotonic() >= end:
            return
        time.sleep(TICK)
