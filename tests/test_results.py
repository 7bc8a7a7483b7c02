"""Waiting for jobs to finish: ``Queue.wait`` / ``Queue.result`` and their ``_sync``
twins, woken by the pgqueue_finished notification on one shared LISTEN connection per
event loop, with a poll that covers a lost notification (pgqueue/results.py)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from workerproc import WorkerProcess

import pgqueue
from pgqueue import JobFailedError, JobNotFoundError, JobState, PgQueueError, WaitTimeoutError
from pgqueue.results import WAITER_APPLICATION_NAME

APP = "dsn_app:queue"  # dsn_app.add(a, b) on queue "dsn_app", returns a + b
BOUND = 60  # seconds: every wait in these tests ends well before, or the test fails
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity "
    f"WHERE datname = current_database() AND application_name = '{WAITER_APPLICATION_NAME}'"
)


def _listeners(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(LISTENERS).fetchone()
        assert row is not None
        return int(row[0])


async def _until_listeners(dsn: str, count: int) -> None:
    deadline = time.monotonic() + BOUND
    while (seen := await asyncio.to_thread(_listeners, dsn)) != count:
        assert time.monotonic() < deadline, f"{seen} waiter connections, not {count}"
        await asyncio.sleep(0.05)


def _looked(dsn: str) -> bool:
    """Whether a waiting connection has read the waited jobs after its LISTEN (its last
    statement is wait_jobs, done): a job finished after that is seen by a later look."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            LISTENERS + " AND state = 'idle' AND query LIKE '%waited_id%'"
        ).fetchone()
        assert row is not None
        return int(row[0]) == 1


async def _until_looked(dsn: str) -> None:
    deadline = time.monotonic() + BOUND
    while not await asyncio.to_thread(_looked, dsn):
        assert time.monotonic() < deadline, "no waiting connection has looked at its jobs"
        await asyncio.sleep(0.05)


def _finish_silently(dsn: str, job_id: int, result: str = "7") -> None:
    """Finish a job as succeeded the way no pgqueue statement does: a plain UPDATE,
    which sends no pgqueue_finished notification."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.jobs SET state = 'running' WHERE id = %s", (job_id,))
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'succeeded', result = %s::jsonb, "
            "finished_at = now() WHERE id = %s",
            (result, job_id),
        )


async def _add(queue: pgqueue.Queue, a: object, b: object, **options: Any) -> int:
    return (await queue.enqueue("dsn_app.add", {"a": a, "b": b}, queue="dsn_app", **options)).id


async def test_wait_and_result_for_jobs_a_worker_succeeded_and_failed(queue, dsn):
    ok = await _add(queue, 2, 3)
    bad = await _add(queue, "x", 1, max_attempts=1)  # "x" + 1: TypeError, no retry
    worker = WorkerProcess(APP, dsn)
    try:
        done, failed = await asyncio.gather(
            queue.wait(ok, timeout=BOUND), queue.wait(bad, timeout=BOUND)
        )
        assert (done.id, done.state, done.result) == (ok, JobState.SUCCEEDED, 5)
        assert (failed.id, failed.state) == (bad, JobState.FAILED)
        assert await queue.result(ok, timeout=BOUND) == 5
        with pytest.raises(JobFailedError) as caught:
            await queue.result(bad, timeout=BOUND)
        assert caught.value.state is JobState.FAILED
        assert caught.value.job.id == bad
        assert caught.value.error is not None
        assert caught.value.error["type"] == "builtins.TypeError"
        assert "TypeError" in str(caught.value)
    finally:
        worker.stop()
        worker.close()


async def test_wait_returns_a_job_cancelled_while_waited_for(queue, dsn, monkeypatch):
    # No poll within the bound: only the cancel's notification can wake these waits.
    monkeypatch.setattr(pgqueue.results, "POLL_SECONDS", 3600.0)
    job_id = await _add(queue, 1, 1, run_at=datetime(2100, 1, 1, tzinfo=UTC))
    waiting = asyncio.create_task(queue.wait(job_id, timeout=BOUND))
    result = asyncio.create_task(queue.result(job_id, timeout=BOUND))
    await _until_looked(dsn)  # listening, and the job seen unfinished
    assert await queue.cancel(job_id) is JobState.QUEUED
    job = await waiting
    assert (job.id, job.state) == (job_id, JobState.CANCELLED)
    with pytest.raises(JobFailedError) as caught:
        await result
    assert caught.value.state is JobState.CANCELLED
    assert caught.value.error is None  # it never ran


async def test_a_job_finished_before_the_wait_returns_at_once(queue, dsn):
    cancelled = await _add(queue, 1, 1)
    await queue.cancel(cancelled)
    succeeded = await _add(queue, 1, 1)
    _finish_silently(dsn, succeeded, "42")
    assert (await queue.wait(cancelled, timeout=BOUND)).state is JobState.CANCELLED
    assert await queue.result(succeeded, timeout=BOUND) == 42


async def test_a_wait_past_its_timeout_raises_wait_timeout_error(queue):
    job_id = await _add(queue, 1, 1)  # no worker: it stays queued
    with pytest.raises(WaitTimeoutError) as caught:
        await asyncio.wait_for(queue.wait(job_id, timeout=0.3), BOUND)
    assert (caught.value.job_id, caught.value.timeout) == (job_id, 0.3)
    assert isinstance(caught.value, PgQueueError)
    assert isinstance(caught.value, TimeoutError)
    with pytest.raises(WaitTimeoutError):
        await asyncio.wait_for(queue.result(job_id, timeout=0.3), BOUND)
    assert (await queue.get_job(job_id)).state is JobState.QUEUED  # untouched


async def test_an_unknown_job_and_a_bad_timeout_are_refused(queue):
    with pytest.raises(JobNotFoundError):
        await asyncio.wait_for(queue.wait(987654321, timeout=BOUND), BOUND)
    with pytest.raises(JobNotFoundError):
        await asyncio.wait_for(queue.result(987654321, timeout=BOUND), BOUND)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            await queue.wait(1, timeout=bad)


async def test_a_lost_notification_is_covered_by_the_poll(queue, dsn):
    job_id = await _add(queue, 1, 1)
    waiting = asyncio.create_task(queue.wait(job_id, timeout=BOUND))
    await _until_looked(dsn)  # listening, and the job seen unfinished
    await asyncio.to_thread(_finish_silently, dsn, job_id)
    job = await asyncio.wait_for(waiting, BOUND)
    assert (job.state, job.result) == (JobState.SUCCEEDED, 7)


async def test_a_dropped_listener_connection_is_reopened_and_looks_again(queue, dsn):
    job_id = await _add(queue, 1, 1)
    waiting = asyncio.create_task(queue.wait(job_id, timeout=BOUND))
    await _until_looked(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (WAITER_APPLICATION_NAME,),
        )
    # Finished while nobody listens (or not yet again): its notification may be lost.
    await asyncio.to_thread(_finish_silently, dsn, job_id)
    assert (await asyncio.wait_for(waiting, BOUND)).state is JobState.SUCCEEDED
    # The new connection serves later waits, woken by their notifications.
    other = await _add(queue, 1, 1)
    waiting = asyncio.create_task(queue.wait(other, timeout=BOUND))
    await asyncio.sleep(0)
    await queue.cancel(other)
    assert (await asyncio.wait_for(waiting, BOUND)).state is JobState.CANCELLED
    await _until_listeners(dsn, 1)


async def test_close_ends_the_listener_and_the_waits_under_way(dsn):
    queue = pgqueue.Queue(dsn)
    job_id = await _add(queue, 1, 1)
    waiting = asyncio.create_task(queue.wait(job_id, timeout=BOUND))
    await _until_listeners(dsn, 1)
    await queue.close()
    with pytest.raises(PgQueueError, match="closed"):
        await asyncio.wait_for(waiting, BOUND)
    await _until_listeners(dsn, 0)


def test_the_sync_twins(dsn):
    with pgqueue.Queue(dsn) as queue:
        ok = queue.enqueue_sync("dsn_app.add", {"a": 20, "b": 22}, queue="dsn_app").id
        bad = queue.enqueue_sync(
            "dsn_app.add", {"a": "x", "b": 1}, queue="dsn_app", max_attempts=1
        ).id
        idle = queue.enqueue_sync("dsn_app.add", {"a": 1, "b": 1}, queue="elsewhere").id
        with pytest.raises(JobNotFoundError):
            queue.wait_sync(987654321, timeout=BOUND)
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError):
            queue.result_sync(idle, timeout=0.3)
        assert time.monotonic() - started < BOUND
        worker = WorkerProcess(APP, dsn)
        try:
            assert queue.result_sync(ok, timeout=BOUND) == 42
            with pytest.raises(JobFailedError) as caught:
                queue.result_sync(bad, timeout=BOUND)
            assert caught.value.state is JobState.FAILED
        finally:
            worker.stop()
            worker.close()
        assert queue.wait_sync(ok, timeout=BOUND).state is JobState.SUCCEEDED  # finished before
        # Finished without a notification while a thread waits: the poll sees it.
        waited: list[pgqueue.Job] = []
        thread = threading.Thread(
            target=lambda: waited.append(queue.wait_sync(idle, timeout=BOUND)), daemon=True
        )
        thread.start()
        deadline = time.monotonic() + BOUND
        while not _looked(dsn):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _finish_silently(dsn, idle)
        thread.join(BOUND / 2)  # well before the wait's own timeout: woken by the poll
        assert [job.state for job in waited] == [JobState.SUCCEEDED]
    assert _listeners(dsn) == 0  # a sync wait's connection lives as long as the call


async def test_a_thousand_concurrent_waiters_share_one_listen_connection(queue, dsn):
    """The issue's test: 1,000 waiters in one process, 1,000 jobs, 2 worker processes.
    Prints the wake-up latency (the job's finished_at to its waiter's return)."""
    count = 1000
    specs = [queue.build("dsn_app.add", {"a": n, "b": 1}, queue="dsn_app") for n in range(count)]
    ids = [r.id for r in await queue.enqueue_many(specs)]
    returned_at: dict[int, datetime] = {}

    async def waiter(job_id: int) -> pgqueue.Job:
        job = await queue.wait(job_id, timeout=3 * BOUND)
        returned_at[job_id] = datetime.now(UTC)
        return job

    waiting = [asyncio.create_task(waiter(job_id)) for job_id in ids]
    await _until_listeners(dsn, 1)
    workers = [WorkerProcess(APP, dsn) for _ in range(2)]
    try:
        jobs = await asyncio.wait_for(asyncio.gather(*waiting), 3 * BOUND)
        assert await asyncio.to_thread(_listeners, dsn) == 1  # still just the one
    finally:
        for worker in workers:
            worker.stop()
            worker.close()
    assert [job.id for job in jobs] == ids
    assert all(job.state is JobState.SUCCEEDED for job in jobs)
    assert [job.result for job in jobs] == [n + 1 for n in range(count)]
    latencies = [
        (returned_at[job.id] - job.finished_at).total_seconds() * 1000
        for job in jobs
        if job.finished_at is not None
    ]
    print(
        f"\nwake-up latency over {len(latencies)} waiters: "
        f"p50 {statistics.median(latencies):.1f} ms, "
        f"p90 {statistics.quantiles(latencies, n=10)[-1]:.1f} ms, max {max(latencies):.1f} ms"
    )
