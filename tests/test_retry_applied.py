"""The retry delay as a real Worker applies it, read back from the database: after each
failed attempt the job's run_at is the failure's time plus the task's policy delay for
that attempt, within the policy's jitter bounds; the next attempt never starts before
it; and jobs failing together are spread out by the jitter rather than all coming back
at the same instant. (test_worker covers retries end to end; the policy's maths alone
is tested without a worker.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import psycopg

from pgqueue import JobState, RetryPolicy, current_job
from pgqueue.testing import running_worker, wait_for_job

# Unlike the default policy (base 1 s), and capped within the attempts below, so that a
# worker applying the wrong policy, the wrong attempt number or no cap is caught.
STEPPED = RetryPolicy(base=0.3, factor=2.0, max_delay=0.8, jitter=0.5)
# Delays long enough that no retry comes back while the test reads them.
LONG = RetryPolicy(base=60.0, factor=2.0, max_delay=600.0, jitter=0.5)
# The database stores times to the microsecond: the delay read back may differ by that.
TIME_RESOLUTION = 2e-6


def bounds(policy: RetryPolicy, attempt: int) -> tuple[float, float]:
    """The shortest and longest delay ``policy`` allows after failed ``attempt``."""
    capped = min(policy.base * policy.factor ** (attempt - 1), policy.max_delay)
    return capped * (1 - policy.jitter), capped


def failed_at(error: dict[str, object]) -> datetime:
    """The time the database recorded the failed attempt (the transaction that set
    run_at, so the delay is exactly run_at minus this)."""
    return datetime.fromisoformat(str(error["at"]))


async def test_each_failed_attempt_comes_back_after_its_policy_delay(dsn, queue):
    attempts = 4
    # Per attempt: when it raised (by this clock), and the job's row as it started.
    raised: dict[int, datetime] = {}
    rows: dict[int, tuple[datetime, datetime, list[dict[str, object]]]] = {}

    @queue.task(name="stepped", max_attempts=attempts, retry=STEPPED)
    async def stepped() -> str:
        job = current_job()
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT run_at, started_at, errors FROM pgqueue.jobs WHERE id = %s", (job.id,)
            )
            row = await cur.fetchone()
        assert row is not None
        rows[job.attempt] = row
        if job.attempt < attempts:
            raised[job.attempt] = datetime.now(UTC)
            raise ConnectionError(f"attempt {job.attempt} failed")
        return "done"

    # The poll is a minute away: each retry is claimed by the worker's alarm for its run_at.
    async with running_worker(queue, poll_interval=60):
        result = await stepped.enqueue()
        job = await wait_for_job(queue, result.id, timeout=30)
    assert (job.state, job.attempts) == (JobState.SUCCEEDED, attempts)
    errors = job.errors
    assert [e["attempt"] for e in errors] == list(range(1, attempts))
    for attempt in range(1, attempts):
        # The run_at the next attempt was claimed under is the one this failure set.
        run_at, next_started, _ = rows[attempt + 1]
        at = failed_at(errors[attempt - 1])
        assert at >= raised[attempt]
        delay = (run_at - at).total_seconds()
        low, high = bounds(STEPPED, attempt)
        assert low - TIME_RESOLUTION <= delay <= high + TIME_RESOLUTION, (attempt, delay)
        # Not claimed before it was due.
        assert next_started >= run_at, (attempt, next_started, run_at)


async def test_jobs_failing_together_are_spread_by_the_jitter_within_its_bounds(dsn, queue):
    jobs = 8
    started = 0
    all_started = asyncio.Event()

    @queue.task(name="together", max_attempts=3, retry=LONG)
    async def together(n: int) -> None:
        nonlocal started
        started += 1
        if started == jobs:
            all_started.set()
        # Every job fails at the same moment, so that only the jitter can tell their
        # delays apart.
        await asyncio.wait_for(all_started.wait(), 20)
        raise ConnectionError(f"job {n} failed")

    async with running_worker(queue, concurrency=jobs, poll_interval=60):
        await queue.enqueue_many([together.job(n=n) for n in range(jobs)])
        rows = await _wait_for_rows(
            dsn,
            "SELECT run_at, errors FROM pgqueue.jobs WHERE state = 'queued' "
            "AND jsonb_array_length(errors) = 1",
            jobs,
        )
    low, high = bounds(LONG, 1)
    delays = [(run_at - failed_at(errors[0])).total_seconds() for run_at, errors in rows]
    assert all(low - TIME_RESOLUTION <= d <= high + TIME_RESOLUTION for d in delays), delays
    # Without jitter every delay would be the same 60 s. Drawn at random, nearly all differ
    # (two equal to the microsecond is a one-in-tens-of-thousands event, hence the slack).
    assert len({round(d, 6) for d in delays}) > jobs // 2, delays


async def _wait_for_rows(dsn: str, sql: str, count: int, timeout: float = 20) -> list[tuple]:
    """Poll (without blocking the loop the worker runs on) until ``sql`` gives ``count``
    rows; return them."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(sql)
            rows = await cur.fetchall()
            if len(rows) == count:
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(rows)} rows, not {count}, after {timeout} s: {sql}")
            await asyncio.sleep(0.02)
