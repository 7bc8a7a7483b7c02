"""Durable steps (pgqueue.steps): a step's function runs once per job, its JSON result
is recorded with the job and returned to later attempts; in a transactional task the
record commits and rolls back with the task's writes; a SIGKILLed worker's finished
step is not run again by the attempt that follows."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import psycopg
import pytest

import pgqueue
from pgqueue import JobState
from pgqueue.steps import InvalidStepError, JobStep, StepResultError
from pgqueue.testing import running_worker, wait_for_job
from pgqueue.worker.steps import JobLostError

sys.path.insert(0, str(Path(__file__).parent / "apps"))
from workerproc import WorkerProcess, wait_for_sql

NOW = pgqueue.RetryPolicy(base=0, jitter=0)


@pytest.fixture
def effects(dsn):
    """A table of side effects, written by steps' functions, and a reader of it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE step_effects (job_id bigint, step text, attempt int, pid int, "
            "at timestamptz DEFAULT clock_timestamp())"
        )

    def rows(job_id: int) -> list[tuple[str, int]]:
        with psycopg.connect(dsn) as conn:
            return conn.execute(
                "SELECT step, attempt FROM step_effects WHERE job_id = %s ORDER BY at",
                (job_id,),
            ).fetchall()

    return rows


def stored_steps(dsn: str, job_id: int) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT name, attempt FROM pgqueue.job_steps WHERE job_id = %s ORDER BY finished_at",
            (job_id,),
        ).fetchall()


def error_types(job: pgqueue.Job) -> list[str]:
    return [e["type"] for e in job.errors]


# --- once, then replayed -----------------------------------------------------------------


async def test_a_step_runs_once_and_its_result_is_replayed_on_a_retry(dsn, queue):
    calls: list[int] = []

    async def charge(order: int, *, cents: int) -> dict[str, object]:
        calls.append(pgqueue.current_job().attempt)
        return {"order": order, "cents": cents, "charge": f"ch_{len(calls)}"}

    @queue.task(name="order", max_attempts=3, retry=NOW)
    async def order(order_id: int) -> dict[str, object]:
        job = pgqueue.current_job()
        charged = await job.step("charge", charge, order_id, cents=1250)
        if job.attempt == 1:
            raise RuntimeError("the shipping service is down")
        shipped = await job.step("ship", lambda: f"shipped {order_id}")
        return {"charged": charged, "shipped": shipped}

    async with running_worker(queue):
        job = await wait_for_job(queue, (await order.enqueue(order_id=7)).id, timeout=30)
    assert job.state is JobState.SUCCEEDED, job.errors
    assert job.attempts == 2
    assert calls == [1]  # the second attempt got the charge back without charging again
    assert job.result == {
        "charged": {"order": 7, "cents": 1250, "charge": "ch_1"},
        "shipped": "shipped 7",
    }
    steps = await queue.job_steps(job.id)
    assert [(s.name, s.result, s.attempt) for s in steps] == [
        ("charge", {"order": 7, "cents": 1250, "charge": "ch_1"}, 1),
        ("ship", "shipped 7", 2),
    ]
    assert all(isinstance(s, JobStep) and s.finished_at is not None for s in steps)
    assert stored_steps(dsn, job.id) == [("charge", 1), ("ship", 2)]


async def test_the_sync_twin_runs_once_and_replays_in_a_plain_task(queue):
    calls: list[int] = []

    def reserve(sku: str) -> list[object]:
        calls.append(pgqueue.current_job().attempt)
        return [sku, len(calls)]

    @queue.task(name="reserve_then_fail_once", max_attempts=3, retry=NOW)
    def reserve_then_fail_once(sku: str) -> object:
        job = pgqueue.current_job()
        reserved = job.step_sync("reserve", reserve, sku)
        again = job.step_sync("reserve", reserve, sku)  # the same name: the recorded result
        if job.attempt == 1:
            raise RuntimeError("fails after the step")
        return [reserved, again]

    async with running_worker(queue):
        job = await wait_for_job(queue, (await reserve_then_fail_once.enqueue(sku="X1")).id)
    assert job.state is JobState.SUCCEEDED, job.errors
    assert calls == [1]
    assert job.result == [["X1", 1], ["X1", 1]]
    assert [(s.name, s.attempt) for s in queue.job_steps_sync(job.id)] == [("reserve", 1)]


async def test_a_step_returns_its_json_round_trip_on_the_first_run_as_on_a_replay(queue):
    seen: list[object] = []

    @queue.task(name="shapes", max_attempts=2, retry=NOW)
    async def shapes() -> None:
        job = pgqueue.current_job()
        # A plain function, an async one, and a blocking one through asyncio.to_thread.
        seen.append(await job.step("tuple", lambda: (1, "a", None)))
        seen.append(await job.step("keys", asyncio.sleep, 0, {1: "one"}))
        seen.append(await job.step("thread", asyncio.to_thread, sorted, [3, 1, 2]))
        if job.attempt == 1:
            raise RuntimeError("again")

    async with running_worker(queue):
        job = await wait_for_job(queue, (await shapes.enqueue()).id)
    assert job.state is JobState.SUCCEEDED, job.errors
    first, replay = seen[:3], seen[3:]
    assert first == replay == [[1, "a", None], {"1": "one"}, [1, 2, 3]]


async def test_a_step_whose_function_raises_records_nothing_and_runs_again(dsn, queue):
    calls: list[int] = []

    def flaky() -> str:
        calls.append(pgqueue.current_job().attempt)
        if len(calls) == 1:
            raise ConnectionError("the payment gateway timed out")
        return "paid"

    @queue.task(name="pays", max_attempts=3, retry=NOW)
    async def pays() -> str:
        return await pgqueue.current_job().step("pay", flaky)

    async with running_worker(queue):
        job = await wait_for_job(queue, (await pays.enqueue()).id)
    assert (job.state, job.result, calls) == (JobState.SUCCEEDED, "paid", [1, 2])
    assert error_types(job) == ["builtins.ConnectionError"]
    assert stored_steps(dsn, job.id) == [("pay", 2)]


# --- the SIGKILLed worker ----------------------------------------------------------------


def test_a_worker_killed_between_two_steps_does_not_run_the_first_again(dsn, effects):
    """A real worker process runs two jobs (one async, one plain function) to the point
    between their two steps, and is SIGKILLed there. Another worker rescues both once
    the dead one's lease (1 s) has run out: each job's first step is replayed from its
    record (its side effect exists once, from attempt 1), its second runs, and the job
    succeeds on attempt 2."""
    queue = pgqueue.Queue(dsn)
    ids = [
        queue.enqueue_sync("steps.async_two", {}, queue="steps", max_attempts=5).id,
        queue.enqueue_sync("steps.sync_two", {}, queue="steps", max_attempts=5).id,
    ]
    queue.close_sync()
    options = ("--lease", "1", "--poll-interval", "0.5", "--log-level", "info")
    env = {"EFFECTS_DSN": dsn}
    first = WorkerProcess("steps_app:queue", dsn, *options, env=env)
    second = None
    try:
        # Both first steps recorded (and so their effects written): the worker is
        # between the two steps of each job, stalled there on attempt 1.
        wait_for_sql(
            dsn,
            "SELECT count(*) FROM pgqueue.job_steps WHERE name = 'first' AND attempt = 1",
            2,
            timeout=60,
        )
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        second = WorkerProcess("steps_app:queue", dsn, *options, env=env)
        wait_for_sql(
            dsn,
            "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'",
            2,
            timeout=90,
        )
        assert second.stop() == 0, second.log_path.read_text()[-4000:]
    finally:
        first.close()
        if second is not None:
            second.close()

    check = pgqueue.Queue(dsn)
    try:
        for job_id in ids:
            job = check.get_job_sync(job_id)
            assert job is not None
            assert (job.state, job.attempts) == (JobState.SUCCEEDED, 2), job.errors
            assert error_types(job) == ["pgqueue.WorkerLost"]
            assert effects(job_id) == [("first", 1), ("second", 2)]
            assert stored_steps(dsn, job_id) == [("first", 1), ("second", 2)]
            # The first step's result came back from its record: the killed process's.
            assert job.result["first"]["attempt"] == 1
            assert job.result["first"]["pid"] == first.pid
            assert job.result["second"]["attempt"] == 2
    finally:
        check.close_sync()


# --- transactional tasks -----------------------------------------------------------------


async def test_a_transactional_steps_record_commits_and_rolls_back_with_its_writes(
    dsn, queue, effects
):
    calls: list[int] = []

    @queue.task(name="tx_steps", transactional=True, max_attempts=3, retry=NOW)
    async def tx_steps(conn) -> object:
        job = pgqueue.current_job()

        async def book() -> str:
            calls.append(job.attempt)
            await conn.execute(
                "INSERT INTO step_effects (job_id, step, attempt) VALUES ($1, 'book', $2)",
                job.id,
                job.attempt,
            )
            return f"booked by attempt {job.attempt}"

        booked = await job.step("book", book)
        # Inside the task's transaction, its record is there already, uncommitted.
        recorded = await conn.fetchval(
            "SELECT count(*) FROM pgqueue.job_steps WHERE job_id = $1", job.id
        )
        if job.attempt == 1:
            raise RuntimeError("rolls back the booking and its record")
        return [booked, recorded]

    async with running_worker(queue):
        job = await wait_for_job(queue, (await tx_steps.enqueue()).id, timeout=30)
    assert job.state is JobState.SUCCEEDED, job.errors
    # Attempt 1's booking and record rolled back together: attempt 2 booked again, and
    # what is left is its booking and its record, committed with the job's success.
    assert calls == [1, 2]
    assert job.result == ["booked by attempt 2", 1]
    assert effects(job.id) == [("book", 2)]
    assert stored_steps(dsn, job.id) == [("book", 2)]


async def test_the_sync_twin_in_a_plain_transactional_task(dsn, queue, effects):
    @queue.task(name="tx_sync_steps", transactional=True, max_attempts=3, retry=NOW)
    def tx_sync_steps(conn) -> object:
        job = pgqueue.current_job()

        def book() -> int:
            conn.execute(
                "INSERT INTO step_effects (job_id, step, attempt) VALUES (%s, 'book', %s)",
                (job.id, job.attempt),
            )
            return job.attempt

        booked = job.step_sync("book", book)
        if job.attempt == 1:
            raise RuntimeError("rolls back")
        return booked

    async with running_worker(queue):
        job = await wait_for_job(queue, (await tx_sync_steps.enqueue()).id, timeout=30)
    assert (job.state, job.result) == (JobState.SUCCEEDED, 2), job.errors
    assert effects(job.id) == [("book", 2)]
    assert stored_steps(dsn, job.id) == [("book", 2)]


async def test_cancelling_a_transactional_task_past_a_step_does_not_wait_for_it(
    dsn, queue, effects
):
    """The record's key to the job is checked at commit: an INSERT checked at once would
    lock the job's row until the task's transaction ends, and the cancel (which locks
    that row) would wait for the whole task. Cancelled, the task's transaction rolls
    back: its step's write and record with it."""
    stepped = asyncio.Event()

    @queue.task(name="tx_long", transactional=True)
    async def tx_long(conn) -> None:
        job = pgqueue.current_job()

        async def write() -> None:
            await conn.execute(
                "INSERT INTO step_effects (job_id, step, attempt) VALUES ($1, 'write', 1)",
                job.id,
            )

        await job.step("write", write)
        stepped.set()
        await asyncio.sleep(60)

    async with running_worker(queue):
        job_id = (await tx_long.enqueue()).id
        await asyncio.wait_for(stepped.wait(), 20)
        # Bounded well below the task's minute: a cancel waiting for it fails here.
        assert await asyncio.wait_for(queue.cancel(job_id), 5) is JobState.RUNNING
        job = await wait_for_job(queue, job_id, timeout=20)
    assert job.state is JobState.CANCELLED
    assert effects(job_id) == []
    assert stored_steps(dsn, job_id) == []


# --- a job taken away while a step runs ------------------------------------------------------


async def test_a_step_that_finishes_after_its_job_was_cancelled_is_not_recorded(dsn, queue):
    """A plain function is not interrupted by a cancel: its step finishes, finds the job
    no longer its attempt's, records nothing and stops the task (JobLostError), and
    the worker writes no outcome over the cancel."""
    raised: list[BaseException] = []
    after: list[str] = []

    def cancel_meanwhile() -> str:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pgqueue.cancel_job(%s)", (pgqueue.current_job().id,))
        return "done too late"

    @queue.task(name="taken_away")
    def taken_away() -> None:
        job = pgqueue.current_job()
        try:
            job.step_sync("slow", cancel_meanwhile)
        except JobLostError as exc:
            raised.append(exc)
            raise
        after.append("went on")

    async with running_worker(queue):
        job_id = (await taken_away.enqueue()).id
        job = await wait_for_job(queue, job_id)
        # The worker has let the job go once it holds it no more.
        for _ in range(200):
            if not (await queue.queue_stats())[0].running:
                break
            await asyncio.sleep(0.01)
    assert job.state is JobState.CANCELLED
    assert len(raised) == 1
    assert isinstance(raised[0], pgqueue.PgQueueError)
    assert after == []
    assert stored_steps(dsn, job_id) == []
    final = await queue.get_job(job_id)
    assert final is not None
    assert (final.state, final.errors) == (JobState.CANCELLED, [])


# --- bad names, bad results, bad uses ------------------------------------------------------


async def test_bad_step_names_are_refused_before_the_function_runs(dsn, queue):
    calls: list[object] = []
    bad_names = ["", "x" * 256, "a\x00b", "\ud800", 7, None]

    @queue.task(name="bad_names")
    async def bad_names_task() -> list[str]:
        job = pgqueue.current_job()
        refused = []
        for name in bad_names:
            try:
                await job.step(name, calls.append, name)
            except InvalidStepError:
                refused.append("async")
            try:
                await asyncio.to_thread(job.step_sync, name, calls.append, name)
            except InvalidStepError:
                refused.append("sync")
        # The longest name allowed is fine.
        await job.step("y" * 255, calls.append, "longest")
        return refused

    async with running_worker(queue):
        job = await wait_for_job(queue, (await bad_names_task.enqueue()).id)
    assert job.state is JobState.SUCCEEDED, job.errors
    assert job.result == ["async", "sync"] * len(bad_names)
    assert issubclass(InvalidStepError, ValueError)
    assert calls == ["longest"]
    assert stored_steps(dsn, job.id) == [("y" * 255, 1)]


@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_result_that_is_not_json_fails_the_job_for_good(dsn, queue, face):
    calls: list[int] = []

    def not_json() -> object:
        calls.append(1)
        return {"when": object()}

    if face == "async":

        @queue.task(name="not_json", max_attempts=3, retry=NOW)
        async def task() -> None:
            await pgqueue.current_job().step("weird", not_json)

    else:

        @queue.task(name="not_json", max_attempts=3, retry=NOW)
        def task() -> None:
            pgqueue.current_job().step_sync("weird", not_json)

    async with running_worker(queue):
        job = await wait_for_job(queue, (await task.enqueue()).id)
    assert job.state is JobState.FAILED
    assert job.attempts == 1  # a PermanentError: not retried, not run again
    assert calls == [1]
    assert error_types(job) == ["pgqueue.steps.StepResultError"]
    assert "JSON" in job.errors[0]["message"]
    assert stored_steps(dsn, job.id) == []
    assert issubclass(StepResultError, pgqueue.PermanentError)


async def test_misuses_get_clear_errors(queue):
    outcomes: dict[str, str] = {}

    async def slow() -> int:
        await asyncio.sleep(0.05)
        return 1

    async def coroutine_fn() -> int:
        return 1

    @queue.task(name="misuses")
    async def misuses() -> dict[str, str]:
        job = pgqueue.current_job()
        # The same name running twice at once in one attempt.
        results = await asyncio.gather(
            job.step("twice", slow), job.step("twice", slow), return_exceptions=True
        )
        outcomes["twice"] = sorted(type(r).__name__ for r in results)
        try:
            job.step_sync("blocking", lambda: 1)  # on the event loop
        except RuntimeError as exc:
            outcomes["sync_on_loop"] = str(exc)
        try:
            await asyncio.to_thread(job.step_sync, "async_fn", coroutine_fn)
        except TypeError as exc:
            outcomes["async_fn"] = str(exc)
        return outcomes

    async with running_worker(queue):
        job = await wait_for_job(queue, (await misuses.enqueue()).id)
    assert job.state is JobState.SUCCEEDED, job.errors
    assert job.result["twice"] == ["InvalidStepError", "int"]
    assert "await current_job().step" in job.result["sync_on_loop"]
    assert "plain function" in job.result["async_fn"]


# --- reading and pruning -------------------------------------------------------------------


async def test_a_jobs_steps_go_with_the_job(dsn, queue):
    @queue.task(name="two_steps")
    async def two_steps() -> None:
        job = pgqueue.current_job()
        await job.step("a", lambda: 1)
        await job.step("b", lambda: 2)

    async with running_worker(queue):
        job = await wait_for_job(queue, (await two_steps.enqueue()).id)
    assert [s.name for s in await queue.job_steps(job.id)] == ["a", "b"]
    assert await queue.job_steps(job.id + 1000) == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (job.id,))
    assert await queue.job_steps(job.id) == []
    assert stored_steps(dsn, job.id) == []


async def test_a_step_record_needs_its_job(dsn):
    """The key is checked at commit: a record of a job that does not exist is refused."""
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.ForeignKeyViolation):
        with conn.transaction():
            conn.execute(
                "INSERT INTO pgqueue.job_steps (job_id, name, result, attempt) "
                "VALUES (424242, 'ghost', 'null', 1)"
            )


# --- inline mode -------------------------------------------------------------------------------


async def test_steps_in_inline_mode_are_kept_in_memory_and_replayed():
    queue = pgqueue.Queue(inline=True)
    calls: list[int] = []

    def charge(amount: int) -> dict[str, int]:
        calls.append(pgqueue.current_job().attempt)
        return {"charged": amount}

    @queue.task(name="inline_order", max_attempts=2)
    async def inline_order() -> object:
        job = pgqueue.current_job()
        charged = await job.step("charge", charge, 5)
        if job.attempt == 1:
            raise RuntimeError("again")
        return charged

    @queue.task(name="inline_sync_order", max_attempts=2)
    def inline_sync_order() -> object:
        job = pgqueue.current_job()
        charged = job.step_sync("charge", charge, 6)
        if job.attempt == 1:
            raise RuntimeError("again")
        return charged

    job_id = (await inline_order.enqueue()).id
    assert await queue.result(job_id) == {"charged": 5}
    sync_id = inline_sync_order.enqueue_sync().id
    assert queue.result_sync(sync_id) == {"charged": 6}
    assert calls == [1, 1]
    steps = await queue.job_steps(job_id)
    assert [(s.name, s.result, s.attempt) for s in steps] == [("charge", {"charged": 5}, 1)]
    assert [s.attempt for s in queue.job_steps_sync(sync_id)] == [1]
    queue.inline_jobs.clear()
    assert await queue.job_steps(job_id) == []
