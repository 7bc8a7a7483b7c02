"""A worker app for durable steps (tests/test_steps.py): two steps, each writing a row
of ``step_effects`` (its side effect, counted by the test), committed at once. On its
first attempt a job stops between the two steps, for the test to SIGKILL its worker."""

import asyncio
import os
import time

import psycopg

import pgqueue

queue = pgqueue.Queue()
STALL_SECONDS = 120  # on attempt 1, between the steps: far longer than the test waits


def _effect(step: str, job: pgqueue.RunningJob) -> dict[str, object]:
    with psycopg.connect(os.environ["EFFECTS_DSN"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO step_effects (job_id, step, attempt, pid) VALUES (%s, %s, %s, %s)",
            (job.id, step, job.attempt, os.getpid()),
        )
    return {"step": step, "attempt": job.attempt, "pid": os.getpid()}


@queue.task(name="steps.async_two", queue="steps", max_attempts=5)
async def async_two() -> dict[str, object]:
    job = pgqueue.current_job()
    first = await job.step("first", asyncio.to_thread, _effect, "first", job)
    if job.attempt == 1:
        await asyncio.sleep(STALL_SECONDS)
    second = await job.step("second", asyncio.to_thread, _effect, "second", job)
    return {"first": first, "second": second}


@queue.task(name="steps.sync_two", queue="steps", max_attempts=5)
def sync_two() -> dict[str, object]:
    job = pgqueue.current_job()
    first = job.step_sync("first", _effect, "first", job)
    if job.attempt == 1:
        time.sleep(STALL_SECONDS)
    second = job.step_sync("second", _effect, "second", job)
    return {"first": first, "second": second}
