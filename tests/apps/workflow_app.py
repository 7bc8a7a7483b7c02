"""A worker app for the workflow tests: every run writes a ledger row (its job, task,
process, what it was given, and its start and finish by the database's clock)."""

import asyncio
import json
import os

from ledger_pool import ledger

import pgqueue

queue = pgqueue.Queue()


async def _record(given: object, pause: float = 0.0) -> None:
    job = pgqueue.current_job()
    pool = await ledger()
    await pool.execute(
        "INSERT INTO wf_ledger (job_id, task, pid, given, started) "
        "VALUES ($1, $2, $3, $4::jsonb, clock_timestamp())",
        job.id,
        job.task,
        os.getpid(),
        json.dumps(given),
    )
    if pause:
        await asyncio.sleep(pause)
    await pool.execute(
        "UPDATE wf_ledger SET finished = clock_timestamp() WHERE job_id = $1 AND finished IS NULL",
        job.id,
    )


@queue.task(name="wf.node")
async def node(name: str, inputs: object = None, pause: float = 0.0) -> str:
    """A node of a graph: returns its name and what it was given, joined."""
    await _record({"name": name, "inputs": inputs}, pause)
    return f"{name}({inputs})" if inputs is not None else name


@queue.task(name="wf.square")
async def square(n: int) -> int:
    return n * n


@queue.task(name="wf.collect")
async def collect(results: list[int]) -> int:
    await _record(results)
    return len(results)


@queue.task(name="wf.add")
async def add(n: int, previous: int = 0, pause: float = 0.0) -> int:
    await _record({"n": n, "previous": previous}, pause)
    return previous * 10 + n
