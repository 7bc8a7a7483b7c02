"""How jobs run: deadlines (async, thread and process tasks), the process pool, and
transactional tasks whose writes commit with their job's success or not at all."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

import pgqueue
from pgqueue import InvalidJobError, JobState
from pgqueue.testing import running_worker, wait_for_job

sys.path.insert(0, str(Path(__file__).parent / "apps"))
import process_app


@pytest.fixture
def effects(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE effects (job_id bigint, attempt int, note text)")

    def rows() -> list[tuple[int, int, str]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT job_id, attempt, note FROM effects ORDER BY 2").fetchall()

    return rows


def _error_types(job: pgqueue.Job) -> list[str]:
    return [e["type"] for e in job.errors]


# --- deadlines -------------------------------------------------------------------------


async def test_an_async_task_is_cancelled_at_its_deadline(queue):
    interrupted = asyncio.Event()

    @queue.task(name="slow_async", timeout=0.2, max_attempts=2, retry=pgqueue.RetryPolicy(base=0))
    async def slow_async() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            interrupted.set()
            raise

    async with running_worker(queue):
        job_id = (await slow_async.enqueue()).id
        job = await wait_for_job(queue, job_id, timeout=30)
    assert interrupted.is_set()
    assert job.state is JobState.FAILED
    assert job.attempts == 2  # a timeout is a failure like any other: retried
    assert _error_types(job) == ["pgqueue.errors.JobTimeoutError"] * 2
    assert "timeout of 0.2 s" in job.errors[0]["message"]


async def test_a_jobs_own_timeout_beats_its_tasks(queue):
    @queue.task(name="naps", timeout=60, max_attempts=1)
    async def naps(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "woke"

    async with running_worker(queue):
        short = (await naps.with_options(timeout=0.1).enqueue(seconds=30)).id
        long = (await queue.enqueue("naps", {"seconds": 0.3}, timeout=30)).id
        short_job = await wait_for_job(queue, short, timeout=30)
        long_job = await wait_for_job(queue, long, timeout=30)
    assert short_job.timeout == 0.1
    assert short_job.state is JobState.FAILED
    assert _error_types(short_job) == ["pgqueue.errors.JobTimeoutError"]
    assert (long_job.state, long_job.result, long_job.timeout) == (JobState.SUCCEEDED, "woke", 30)


async def test_a_thread_task_is_interrupted_at_its_deadline(queue):
    """A plain function in a thread gets JobTimeoutError raised inside it, and the
    attempt is recorded only after the thread has let go."""
    spins = 0
    stopped = threading.Event()

    @queue.task(name="spinner", timeout=0.3, max_attempts=1)
    def spinner() -> None:
        nonlocal spins
        try:
            while True:  # pure Python, no checks of its own: only the exception stops it
                spins += 1
        finally:
            stopped.set()

    async with running_worker(queue):
        job_id = (await spinner.enqueue()).id
        job = await wait_for_job(queue, job_id, timeout=30)
    assert stopped.is_set()
    assert job.state is JobState.FAILED
    assert _error_types(job) == ["pgqueue.errors.JobTimeoutError"]
    settled = spins
    await asyncio.sleep(0.05)
    assert spins == settled  # the thread is really gone, not spinning in the background


async def test_a_thread_task_sees_the_flag_at_its_deadline(queue):
    saw = threading.Event()

    @queue.task(name="checker", timeout=0.2, max_attempts=1)
    def checker() -> str:
        job = pgqueue.current_job()
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                time.sleep(0.01)
        except pgqueue.JobTimeoutError:
            if job.cancel_requested():
                saw.set()
            raise
        return "never"

    async with running_worker(queue):
        job = await wait_for_job(queue, (await checker.enqueue()).id, timeout=30)
    assert saw.is_set()
    assert job.state is JobState.FAILED


def test_timeouts_are_checked_before_anything_is_written(queue):
    for bad in (0, -1, float("inf"), float("nan"), "10", True, 1e13):
        with pytest.raises(InvalidJobError, match="timeout must be a number of seconds from"):
            queue.build("anything", timeout=bad)
        with pytest.raises(InvalidJobError, match="timeout"):

            @queue.task(name=f"bad_timeout_{id(bad)}", timeout=bad)
            def bad_timeout() -> None: ...


async def test_bulk_enqueue_keeps_each_jobs_timeout(queue):
    specs = [queue.build("t", {"n": n}, timeout=n + 1) for n in range(3)]
    specs.append(queue.build("t", {"n": 3}))
    results = await queue.enqueue_many(specs)
    timeouts = [(await queue.get_job(r.id)).timeout for r in results]
    assert timeouts == [1, 2, 3, None]


# --- the process pool ------------------------------------------------------------------


async def test_process_tasks_run_in_other_processes(dsn, queue):
    async with running_worker(process_app.queue, dsn=dsn, processes=2):
        ids = [(await queue.enqueue("proc.pid", queue="proc")).id for _ in range(4)]
        squares = (await queue.enqueue("proc.spin", {"n": 1000}, queue="proc")).id
        jobs = [await wait_for_job(queue, i, timeout=60) for i in ids]
        spun = await wait_for_job(queue, squares, timeout=60)
    assert {j.state for j in jobs} == {JobState.SUCCEEDED}
    pids = {j.result for j in jobs}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2
    assert spun.result == sum(i * i for i in range(1000))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_process_task_past_its_deadline_is_killed(dsn, queue, tmp_path):
    pid_file = tmp_path / "pid"
    async with running_worker(process_app.queue, dsn=dsn, processes=1):
        # Enqueued by name from a Queue without the task: its options are given here.
        job_id = (
            await queue.enqueue(
                "proc.hang", {"pid_file": str(pid_file)}, queue="proc", timeout=0.5, max_attempts=1
            )
        ).id
        job = await wait_for_job(queue, job_id, timeout=60)
        # The pool replaced the killed process: the next job still runs.
        after = await wait_for_job(
            queue, (await queue.enqueue("proc.pid", queue="proc")).id, timeout=60
        )
    assert job.state is JobState.FAILED
    assert _error_types(job) == ["pgqueue.errors.JobTimeoutError"]
    hung = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not _gone(hung) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _gone(hung)
    assert after.state is JobState.SUCCEEDED
    assert after.result != hung


async def test_cancelling_a_running_process_task_kills_its_process(dsn, queue, tmp_path):
    pid_file = tmp_path / "pid"
    async with running_worker(process_app.queue, dsn=dsn, processes=1, poll_interval=60):
        job_id = (
            await queue.enqueue("proc.hang", {"pid_file": str(pid_file)}, queue="proc", timeout=60)
        ).id
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the process task never started"
            await asyncio.sleep(0.02)
        assert await queue.cancel(job_id) is JobState.RUNNING
        hung = int(pid_file.read_text())
        while not _gone(hung) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert _gone(hung)
    job = await queue.get_job(job_id)
    assert job is not None
    assert job.state is JobState.CANCELLED


def test_process_mode_is_refused_where_it_cannot_work(queue):
    with pytest.raises(TypeError, match="plain functions"):

        @queue.task(name="async_in_process", process=True)
        async def async_in_process() -> None: ...

    with pytest.raises(TypeError, match="module-level"):

        @queue.task(name="local_in_process", process=True)
        def local_in_process() -> None: ...

    with pytest.raises(TypeError, match="cannot run in a process"):
        queue.task(name="tx_in_process", process=True, transactional=True)(process_app.pid.fn)


# --- transactional tasks ---------------------------------------------------------------


async def test_a_transactional_tasks_writes_commit_with_its_success(queue, effects):
    @queue.task(name="record", transactional=True)
    async def record(conn, note: str) -> str:
        job = pgqueue.current_job()
        await conn.execute("INSERT INTO effects VALUES ($1, $2, $3)", job.id, job.attempt, note)
        # Inside the transaction that will complete the job: it is still running here.
        state = await conn.fetchval("SELECT state::text FROM pgqueue.jobs WHERE id = $1", job.id)
        return f"{note} while {state}"

    async with running_worker(queue):
        job_id = (await record.enqueue(note="paid")).id
        job = await wait_for_job(queue, job_id)
    assert (job.state, job.result) == (JobState.SUCCEEDED, "paid while running")
    assert effects() == [(job_id, 1, "paid")]


async def test_a_failed_attempt_leaves_no_writes_behind(queue, effects):
    @queue.task(name="flaky_tx", transactional=True, retry=pgqueue.RetryPolicy(base=0))
    async def flaky_tx(conn) -> None:
        job = pgqueue.current_job()
        await conn.execute("INSERT INTO effects VALUES ($1, $2, 'tried')", job.id, job.attempt)
        if job.attempt < 3:
            raise RuntimeError(f"attempt {job.attempt} fails after writing")

    async with running_worker(queue):
        job = await wait_for_job(queue, (await flaky_tx.enqueue()).id, timeout=30)
    assert job.state is JobState.SUCCEEDED
    assert len(job.errors) == 2
    assert effects() == [(job.id, 3, "tried")]  # only the attempt that succeeded


async def test_a_job_taken_away_mid_run_keeps_none_of_that_runs_writes(dsn, queue, effects):
    """The completing UPDATE is guarded: a job rescued from this worker while it ran
    (here: handed back by hand, as a rescue does) is not completed by it, and its
    transaction rolls back with the task's writes."""

    @queue.task(name="taken", transactional=True)
    async def taken(conn) -> None:
        job = pgqueue.current_job()
        await conn.execute("INSERT INTO effects VALUES ($1, $2, 'ran')", job.id, job.attempt)
        if job.attempt == 1:
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute(
                    "UPDATE pgqueue.jobs SET state = 'queued', worker_id = NULL WHERE id = %s",
                    (job.id,),
                )

    async with running_worker(queue):
        job = await wait_for_job(queue, (await taken.enqueue()).id, timeout=30)
    assert job.state is JobState.SUCCEEDED
    assert job.attempts == 2
    assert effects() == [(job.id, 2, "ran")]


async def test_a_sync_transactional_task_gets_a_psycopg_connection(queue, effects):
    @queue.task(name="sync_record", transactional=True, max_attempts=2)
    def sync_record(conn: psycopg.Connection, note: str) -> int:
        job = pgqueue.current_job()
        conn.execute("INSERT INTO effects VALUES (%s, %s, %s)", (job.id, job.attempt, note))
        if note == "boom":
            raise RuntimeError("after writing")
        return job.attempt

    async with running_worker(queue):
        ok = await wait_for_job(queue, (await sync_record.enqueue(note="fine")).id)
        bad = await wait_for_job(queue, (await sync_record.enqueue(note="boom")).id, timeout=30)
    assert (ok.state, ok.result) == (JobState.SUCCEEDED, 1)
    assert bad.state is JobState.FAILED
    assert effects() == [(ok.id, 1, "fine")]


async def test_a_transactional_task_past_its_deadline_rolls_back(queue, effects):
    @queue.task(name="slow_tx", transactional=True, timeout=0.3, max_attempts=1)
    async def slow_tx(conn) -> None:
        await conn.execute("INSERT INTO effects VALUES (0, 0, 'slow')")
        await conn.execute("SELECT pg_sleep(30)")

    async with running_worker(queue):
        job = await wait_for_job(queue, (await slow_tx.enqueue()).id, timeout=30)
    assert job.state is JobState.FAILED
    assert _error_types(job) == ["pgqueue.errors.JobTimeoutError"]
    assert effects() == []


def test_a_transactional_task_needs_a_connection_parameter(queue):
    with pytest.raises(TypeError, match="connection as its first positional parameter"):

        @queue.task(name="no_conn", transactional=True)
        async def no_conn() -> None: ...

    @queue.task(name="with_conn", transactional=True)
    async def with_conn(conn, order_id: int) -> None: ...

    # The connection is the worker's to give: the job's arguments are the rest.
    assert with_conn.job(order_id=7).args_json == '{"order_id":7}'
    with pytest.raises(InvalidJobError):
        with_conn.job(conn=1, order_id=7)
    with pytest.raises(TypeError, match="transactional"):
        with_conn(order_id=7)
