"""Operating on jobs by hand: cancel (queued and running, async and sync tasks), retry,
snooze, and what a running task can know about itself. From Python and from SQL."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest

import pgqueue
from pgqueue import JobNotFoundError, JobState, JobStateError, Snooze
from pgqueue.testing import running_worker, wait_for_job


async def test_a_cancelled_queued_job_never_starts(queue):
    ran = False

    @queue.task(name="never")
    async def never() -> None:
        nonlocal ran
        ran = True

    job_id = (await never.enqueue()).id
    assert await queue.cancel(job_id) is JobState.QUEUED
    async with running_worker(queue) as worker:
        assert worker.idle is not None
        await asyncio.wait_for(worker.idle.wait(), 10)  # looked, found nothing to run
    job = await queue.get_job(job_id)
    assert job is not None
    assert (job.state, job.attempts) == (JobState.CANCELLED, 0)
    assert job.finished_at is not None
    assert not ran


async def test_cancelling_a_running_async_task_interrupts_it_at_once(queue):
    started, interrupted = asyncio.Event(), asyncio.Event()

    @queue.task(name="long")
    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    async with running_worker(queue, poll_interval=60):  # the NOTIFY, not the poll
        job_id = (await long.enqueue()).id
        await asyncio.wait_for(started.wait(), 10)
        assert await queue.cancel(job_id) is JobState.RUNNING
        await asyncio.wait_for(interrupted.wait(), 10)
    job = await queue.get_job(job_id)
    assert job is not None
    assert job.state is JobState.CANCELLED
    assert job.errors == []


async def test_a_sync_task_sees_the_cancel_flag(queue):
    started = threading.Event()
    saw_flag = threading.Event()

    @queue.task(name="polite")
    def polite() -> str:
        started.set()
        job = pgqueue.current_job()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if job.cancel_requested():
                saw_flag.set()
                return "stopped early"
            time.sleep(0.01)
        return "ran to the end"

    async with running_worker(queue):
        job_id = (await polite.enqueue()).id
        await asyncio.to_thread(started.wait, 10)
        queue.cancel_sync(job_id)  # the sync face, and on another connection
        assert await asyncio.to_thread(saw_flag.wait, 10)
        job = await wait_for_job(queue, job_id)
    assert (job.state, job.result) == (JobState.CANCELLED, None)  # its return is dropped


async def test_cancel_falls_back_to_the_poll_when_the_notify_is_lost(dsn, queue):
    started, interrupted = asyncio.Event(), asyncio.Event()

    @queue.task(name="deaf")
    async def deaf() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    async with running_worker(queue, poll_interval=0.3):
        job_id = (await deaf.enqueue()).id
        await asyncio.wait_for(started.wait(), 10)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # Cancelled behind the function's back: no NOTIFY is sent.
            await conn.execute(
                "UPDATE pgqueue.jobs SET state = 'cancelled', finished_at = now() WHERE id = %s",
                (job_id,),
            )
        await asyncio.wait_for(interrupted.wait(), 10)


async def test_cancelling_a_finished_or_unknown_job_is_a_clear_error(queue):
    @queue.task(name="quick")
    async def quick() -> int:
        return 1

    async with running_worker(queue):
        job_id = (await quick.enqueue()).id
        await wait_for_job(queue, job_id)
    with pytest.raises(JobStateError, match=f"job {job_id} is succeeded and cannot be cancelled"):
        await queue.cancel(job_id)
    with pytest.raises(JobNotFoundError, match="there is no job 999999"):
        queue.cancel_sync(999_999)
    job = await queue.get_job(job_id)
    assert job is not None
    assert job.state is JobState.SUCCEEDED  # untouched


async def test_retry_by_hand_keeps_the_history_and_gives_one_more_attempt(dsn, queue):
    calls = 0

    @queue.task(name="fixed_later", max_attempts=1)
    async def fixed_later() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the bug")
        return "fixed"

    async with running_worker(queue, poll_interval=60) as worker:
        job_id = (await fixed_later.enqueue()).id
        failed = await wait_for_job(queue, job_id)
        assert (failed.state, failed.attempts) == (JobState.FAILED, 1)
        later = await queue.enqueue("fixed_later", delay=3600)
        with pytest.raises(JobStateError, match="only failed or cancelled jobs can be retried"):
            await queue.retry(later.id)
        await queue.retry(job_id)  # woken by the function's NOTIFY, not the poll
        done = await wait_for_job(queue, job_id)
    assert (done.state, done.attempts, done.max_attempts, done.result) == (
        JobState.SUCCEEDED,
        2,
        2,
        "fixed",
    )
    assert [e["message"] for e in done.errors] == ["the bug"]
    assert worker.stats.succeeded == 1


def test_cancel_and_retry_from_sql(dsn, queue):
    job_id = queue.enqueue_sync("some.task", {"n": 1})
    with psycopg.connect(dsn, autocommit=True) as conn:
        (state,) = conn.execute("SELECT pgqueue.cancel_job(%s)", (job_id.id,)).fetchone()
        assert state == "queued"
        conn.execute("SELECT pgqueue.retry_job(%s)", (job_id.id,))
        row = conn.execute(
            "SELECT state::text FROM pgqueue.jobs WHERE id = %s", (job_id.id,)
        ).fetchone()
        assert row == ("queued",)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("SELECT pgqueue.retry_job(%s)", (job_id.id,))
    queue.close_sync()


async def test_snooze_runs_again_later_without_using_an_attempt(queue):
    seen: list[tuple[int, int]] = []

    @queue.task(name="waits_for_upstream", max_attempts=1)
    async def waits_for_upstream() -> str:
        job = pgqueue.current_job()
        seen.append((job.id, job.attempt))
        if len(seen) < 3:
            raise Snooze(0.2)
        return "upstream ready"

    async with running_worker(queue, poll_interval=60) as worker:
        job_id = (await waits_for_upstream.enqueue()).id
        job = await wait_for_job(queue, job_id, timeout=30)
    assert (job.state, job.result, job.attempts, job.errors) == (
        JobState.SUCCEEDED,
        "upstream ready",
        1,  # snoozes gave their attempts back: a max_attempts=1 job ran three times
        [],
    )
    assert seen == [(job_id, 1)] * 3
    assert worker.stats.snoozed == 2


def test_current_job_outside_a_task_is_an_error():
    with pytest.raises(LookupError, match="only available inside a running pgqueue task"):
        pgqueue.current_job()
    with pytest.raises(ValueError, match="from 0 to"):
        Snooze(-1)


async def test_a_task_reports_its_progress(queue):
    reported, go_on = asyncio.Event(), asyncio.Event()

    @queue.task(name="steps")
    async def steps() -> None:
        await pgqueue.current_job().set_progress({"done": 1, "of": 3})
        reported.set()
        await go_on.wait()

    @queue.task(name="sync_steps")
    def sync_steps() -> None:
        pgqueue.current_job().set_progress_sync(0.5)
        with pytest.raises(pgqueue.InvalidJobError, match="progress must be JSON"):
            pgqueue.current_job().set_progress_sync({1, 2})

    async with running_worker(queue):
        job_id = (await steps.enqueue()).id
        await asyncio.wait_for(reported.wait(), 10)
        running = await queue.get_job(job_id)
        assert running is not None
        assert (running.state, running.progress) == (JobState.RUNNING, {"done": 1, "of": 3})
        go_on.set()
        finished = await wait_for_job(queue, job_id)
        sync_job = await wait_for_job(queue, (await sync_steps.enqueue()).id)
    assert finished.progress == {"done": 1, "of": 3}  # kept once the job is done
    assert (sync_job.state, sync_job.progress) == (JobState.SUCCEEDED, 0.5)


def test_progress_outside_a_worker_is_a_clear_error():
    job = pgqueue.RunningJob(1, "q", "t", 1, 3)
    with pytest.raises(RuntimeError, match="process=True"):
        job.set_progress_sync(1)
