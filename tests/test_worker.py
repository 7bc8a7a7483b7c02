"""The worker in-process: running async and sync tasks, results, retries with backoff,
dead-lettering, wake-ups by NOTIFY, the LISTEN connection dying, hand-back at stop."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import psycopg
import pytest

import pgqueue
from pgqueue import JobState, PermanentError, RetryPolicy
from pgqueue.executors import AsyncpgExecutor
from pgqueue.testing import running_worker, wait_for_job
from pgqueue.worker import claiming
from pgqueue.worker.claiming import HandBack

FAST_RETRY = RetryPolicy(base=0.05, factor=2.0, max_delay=0.2, jitter=0.5)


async def test_async_and_sync_tasks_run_and_store_results(queue):
    loop_thread = threading.get_ident()
    seen_threads: dict[str, int] = {}

    @queue.task(name="add")
    async def add(a: int, b: int) -> int:
        seen_threads["add"] = threading.get_ident()
        return a + b

    @queue.task(name="report")
    def report(n: int) -> dict[str, object]:
        seen_threads["report"] = threading.get_ident()
        return {"total": sum(range(n)), "ok": True}

    @queue.task(name="nothing")
    async def nothing() -> None:
        return None

    async with running_worker(queue, concurrency=4):
        a = await add.enqueue(2, 3)
        r = await report.enqueue(n=10)
        n = await nothing.enqueue()
        job_a = await wait_for_job(queue, a.id)
        job_r = await wait_for_job(queue, r.id)
        job_n = await wait_for_job(queue, n.id)
    assert (job_a.state, job_a.result, job_a.attempts) == (JobState.SUCCEEDED, 5, 1)
    assert job_r.result == {"total": 45, "ok": True}
    assert job_n.state is JobState.SUCCEEDED
    assert job_n.result is None
    assert job_a.started_at is not None
    assert job_a.finished_at is not None
    assert job_a.finished_at >= job_a.started_at
    # Async tasks ran on the loop's thread; the plain function never did.
    assert seen_threads["add"] == loop_thread
    assert seen_threads["report"] != loop_thread


async def test_a_sync_task_does_not_block_the_event_loop(queue):
    release = threading.Event()
    ticks = 0

    @queue.task(name="blocking")
    def blocking() -> str:
        release.wait(10)
        return "done"

    @queue.task(name="tick")
    async def tick() -> None:
        nonlocal ticks
        ticks += 1

    async with running_worker(queue, concurrency=4):
        b = await blocking.enqueue()
        ids = [(await tick.enqueue()).id for _ in range(5)]
        for job_id in ids:  # every tick completes while the sync task still blocks
            assert (await wait_for_job(queue, job_id)).state is JobState.SUCCEEDED
        assert (await queue.get_job(b.id)).state is JobState.RUNNING  # type: ignore[union-attr]
        release.set()
        assert (await wait_for_job(queue, b.id)).result == "done"
    assert ticks == 5


async def test_failures_retry_with_backoff_then_succeed(queue):
    calls = 0

    @queue.task(name="flaky", max_attempts=5, retry=FAST_RETRY)
    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"try {calls} failed")
        return "third time lucky"

    # The poll is a minute away: each retry is picked up by the alarm the worker sets
    # for its run_at as soon as the retry is written.
    async with running_worker(queue, poll_interval=60):
        result = await flaky.enqueue()
        job = await wait_for_job(queue, result.id, timeout=30)
    assert job.state is JobState.SUCCEEDED
    assert job.attempts == 3
    assert [e["attempt"] for e in job.errors] == [1, 2]
    assert [e["message"] for e in job.errors] == ["try 1 failed", "try 2 failed"]
    assert job.errors[0]["type"] == "builtins.ConnectionError"
    assert "Traceback" in job.errors[0]["traceback"]
    assert "raise ConnectionError" in job.errors[0]["traceback"]
    assert all("at" in e for e in job.errors)


async def test_exhausted_attempts_end_in_failed_with_every_error(queue):
    @queue.task(name="doomed", max_attempts=3, retry=FAST_RETRY)
    async def doomed(n: int) -> None:
        raise ValueError(f"bad n={n}")

    async with running_worker(queue, poll_interval=5) as worker:
        result = await doomed.enqueue(n=7)
        job = await wait_for_job(queue, result.id)
    assert job.state is JobState.FAILED
    assert job.attempts == 3
    assert len(job.errors) == 3
    assert {e["message"] for e in job.errors} == {"bad n=7"}
    assert job.finished_at is not None
    assert (worker.stats.retried, worker.stats.failed) == (2, 1)


async def test_permanent_error_skips_retries(queue):
    @queue.task(name="invalid_input", max_attempts=10)
    async def invalid_input() -> None:
        raise PermanentError("the input can never work")

    async with running_worker(queue):
        job = await wait_for_job(queue, (await invalid_input.enqueue()).id)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.errors[0]["message"] == "the input can never work"


async def test_unknown_task_and_mismatched_arguments_fail_clearly(queue):
    @queue.task(name="known", queue="default")
    async def known(x: int) -> int:
        return x

    async with running_worker(queue):
        unknown = await queue.enqueue("not.registered", {"x": 1}, max_attempts=5)
        mismatched = await queue.enqueue("known", {"y": 1}, max_attempts=5)
        job_u = await wait_for_job(queue, unknown.id)
        job_m = await wait_for_job(queue, mismatched.id)
    assert (job_u.state, job_u.attempts) == (JobState.FAILED, 1)
    assert "unknown task 'not.registered'" in job_u.errors[0]["message"]
    assert (job_m.state, job_m.attempts) == (JobState.FAILED, 1)
    assert "do not match task known" in job_m.errors[0]["message"]


async def test_a_result_that_is_not_json_fails_with_a_clear_error(queue):
    @queue.task(name="returns_a_set")
    async def returns_a_set() -> set[int]:
        return {1, 2}

    async with running_worker(queue):
        job = await wait_for_job(queue, (await returns_a_set.enqueue()).id)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)  # not retried: it cannot help
    assert "task result must be JSON-serialisable" in job.errors[0]["message"]


async def test_priority_then_run_at_orders_the_claim(queue):
    order: list[str] = []

    @queue.task(name="record")
    async def record(label: str) -> None:
        order.append(label)

    jobs = [
        record.with_options(priority=0).job("normal-1"),
        record.with_options(priority=-5).job("low"),
        record.with_options(priority=10).job("urgent"),
        record.with_options(priority=0).job("normal-2"),
    ]
    await queue.enqueue_many(jobs)
    async with running_worker(queue, concurrency=1, batch_size=1) as worker:
        deadline = time.monotonic() + 10
        while worker.stats.succeeded < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert order == ["urgent", "normal-1", "normal-2", "low"]


async def test_a_delayed_job_waits_for_its_run_at(queue):
    started = asyncio.Event()

    @queue.task(name="later")
    async def later() -> None:
        started.set()

    async with running_worker(queue, poll_interval=30):
        result = await later.with_options(delay=0.5).enqueue()
        await asyncio.wait_for(started.wait(), 10)  # long before the 30 s poll
        job = await wait_for_job(queue, result.id)
    assert job.started_at is not None
    assert job.started_at >= job.run_at


async def test_notify_wakes_an_idle_worker_long_before_the_poll(queue):
    started = asyncio.Event()

    @queue.task(name="wake")
    async def wake() -> None:
        started.set()

    async with running_worker(queue, poll_interval=60) as worker:
        assert worker.idle is not None
        await asyncio.wait_for(worker.idle.wait(), 10)  # asleep on LISTEN, a minute to poll
        began = time.monotonic()
        await wake.enqueue()
        await asyncio.wait_for(started.wait(), 20)  # a poll would take 60 s
        waited = time.monotonic() - began
    assert waited < 20


async def test_a_killed_listen_connection_is_reestablished_and_no_job_is_stranded(dsn, queue):
    started = asyncio.Event()

    @queue.task(name="after_kill")
    async def after_kill() -> None:
        started.set()

    async with running_worker(queue, poll_interval=0.5) as worker:
        assert worker.listening is not None
        conn = await asyncpg.connect(dsn)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN %' AND datname = current_database()"
            )
            assert killed == 1
            # The worker notices, and listens again on a new connection.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                relistening = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %' AND datname = current_database()"
                )
                if relistening == 1 and worker.listening.is_set():
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the LISTEN connection was not re-established")
        finally:
            await conn.close()
        result = await after_kill.enqueue()
        await asyncio.wait_for(started.wait(), 15)
        assert (await wait_for_job(queue, result.id)).state is JobState.SUCCEEDED


async def test_jobs_claimed_during_a_stop_are_handed_back_unstarted(dsn, queue):
    ran = False

    @queue.task(name="never")
    async def never() -> None:
        nonlocal ran
        ran = True

    await queue.enqueue_many([never.job() for _ in range(3)])
    locker = await psycopg.AsyncConnection.connect(dsn)
    try:
        # Hold the worker's first claim behind a table lock, stop the worker while the
        # claim is in flight, then let it through: the claimed jobs must go back at
        # once, never started.
        await locker.execute("LOCK TABLE pgqueue.jobs IN EXCLUSIVE MODE")
        async with running_worker(queue, poll_interval=60) as worker:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                cur = await locker.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE SKIP LOCKED%'"
                )
                row = await cur.fetchone()
                if row and row[0]:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the worker's claim never blocked on the lock")
            worker.stop()
            await locker.commit()
    finally:
        await locker.close()
    assert not ran
    assert worker.stats.released == 3
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT state, attempts, started_at FROM pgqueue.jobs")
        rows = await cur.fetchall()
    assert rows == [("queued", 0, None)] * 3


async def test_running_async_jobs_past_the_grace_period_go_back_to_the_queue(queue):
    started = asyncio.Event()

    @queue.task(name="slow", max_attempts=3)
    async def slow() -> None:
        started.set()
        await asyncio.sleep(60)

    async with running_worker(queue, grace_period=0.2) as worker:
        result = await slow.enqueue()
        await asyncio.wait_for(started.wait(), 10)
    assert worker.stats.interrupted == 1
    job = await queue.get_job(result.id)
    assert job is not None
    assert (job.state, job.attempts) == (JobState.QUEUED, 1)
    assert "worker stopped before the job finished" in job.errors[0]["message"]


async def test_transactional_enqueue_runs_on_commit_and_never_on_rollback(dsn, queue):
    ran: list[str] = []
    done = asyncio.Event()

    @queue.task(name="welcome")
    async def welcome(user: str) -> None:
        ran.append(user)
        done.set()

    async with running_worker(queue, poll_interval=60) as worker:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await welcome.with_options(conn=conn).enqueue("rolled-back")
            await conn.rollback()
            await welcome.with_options(conn=conn).enqueue("committed")
            await conn.commit()
        # Woken by the commit's NOTIFY (the poll is a minute away); the rolled-back job
        # neither exists nor woke anyone.
        await asyncio.wait_for(done.wait(), 20)
    assert ran == ["committed"]
    assert worker.stats.claimed == 1


async def test_the_worker_survives_its_connections_being_terminated(dsn, queue):
    done = asyncio.Event()

    @queue.task(name="survivor")
    async def survivor() -> None:
        done.set()

    async with running_worker(queue, poll_interval=0.5) as worker:
        conn = await asyncpg.connect(dsn)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert killed >= 2  # the LISTEN connection and the pool's
        result = await queue.enqueue("survivor")  # the Queue's own pool reconnects too
        await asyncio.wait_for(done.wait(), 20)
        assert (await wait_for_job(queue, result.id)).state is JobState.SUCCEEDED
    assert worker.stats.succeeded == 1


async def test_an_outcome_lost_while_unknown_jobs_are_handed_back_brings_another_pass(dsn, queue):
    """A transactional job's commit turns out unknown while the worker is handing back
    the jobs it holds without knowing (after a lost claim answer): that job was still
    "known" when the hand-back looked, so a second pass must follow, or it would stay
    running under this live worker for good. (Seen once in the fault suite, as a job
    left running for the whole run.)"""
    worker = pgqueue.Worker(queue)
    ids = [r.id for r in await queue.enqueue_many([queue.build("t", {}) for _ in range(2)])]
    outcome_lost, unknown = ids
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now(), "
            "worker_id = %s WHERE id = ANY(%s)",
            (worker.worker_id, ids),
        )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    blocker = await psycopg.AsyncConnection.connect(dsn)
    known = {outcome_lost}  # what the worker knows it holds: the job still running
    hand_back = HandBack(asyncio.Event(), worker.stats)
    try:
        # Hold the unknown job's row so that the hand-back's release waits on it.
        await blocker.execute("SELECT FROM pgqueue.jobs WHERE id = %s FOR UPDATE", (unknown,))
        async with pool.acquire() as conn:
            ex = AsyncpgExecutor(conn)
            first = asyncio.create_task(hand_back.run(ex, worker.worker_id, lambda: known))
            await _wait_until_blocked(dsn, conn.get_server_pid())
            # What the worker does when a transactional commit's outcome is unknown.
            known.discard(outcome_lost)
            hand_back.outcome_lost()
            await blocker.rollback()
            await asyncio.wait_for(first, 10)
            assert (await queue.get_job(unknown)).state is JobState.QUEUED
            assert (await queue.get_job(outcome_lost)).state is JobState.RUNNING
            assert hand_back.unsure
            await hand_back.run(ex, worker.worker_id, lambda: known)
        job = await queue.get_job(outcome_lost)
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    finally:
        await blocker.close()
        await pool.close()


async def _wait_until_blocked(dsn: str, backend_pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            cur = await conn.execute(
                "SELECT wait_event_type FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid = %s",
                (backend_pid,),
            )
            row = await cur.fetchone()
            if row is not None and row[0] == "Lock":
                return
            await asyncio.sleep(0.01)
    raise TimeoutError(f"backend {backend_pid} never waited on a lock")


async def test_a_job_the_worker_lost_track_of_goes_back_at_the_periodic_check(
    dsn, queue, monkeypatch
):
    """Whatever the cause, a job held in the database under a live worker that does not
    know it is handed back by the worker's periodic check, and then runs."""
    monkeypatch.setattr(claiming, "RECONCILE_SECONDS", 0.2)

    @queue.task(name="forgotten")
    async def forgotten() -> str:
        return "ran"

    async with running_worker(queue, poll_interval=0.05) as worker:
        assert worker.idle is not None
        await asyncio.wait_for(worker.idle.wait(), 10)
        job_id = (await queue.enqueue("forgotten", {}, queue="elsewhere")).id
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            # As if claimed by this worker, with the claim's answer lost for good.
            await conn.execute(
                "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now(), "
                "queue = 'default', worker_id = %s WHERE id = %s",
                (worker.worker_id, job_id),
            )
        job = await wait_for_job(queue, job_id, timeout=20)
    assert (job.state, job.result, job.attempts) == (JobState.SUCCEEDED, "ran", 1)
    assert worker.stats.released == 1
