"""Inline mode (pgqueue/inline.py): jobs run inside their enqueue, in memory, with the
checks, results, errors and retries a worker gives them; no database at all."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

import pgqueue
from pgqueue import (
    Admin,
    InvalidJobError,
    JobFailedError,
    JobNotFoundError,
    JobState,
    PermanentError,
    RetryPolicy,
    Snooze,
    current_job,
)
from pgqueue.errors import InlineModeError
from pgqueue.inline import InlineJobs
from pgqueue.testing import inline, running_worker

# A DSN nothing listens on: a test that touched the database would fail on it.
NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=1"


@pytest.fixture
def queue() -> pgqueue.Queue:  # no database: shadows conftest's on purpose
    return pgqueue.Queue(inline=True)


async def test_async_task_runs_at_enqueue_and_its_result_is_read_back(queue):
    seen = []

    @queue.task(name="add", queue="maths", priority=3)
    async def add(a: int, b: int) -> int:
        job = current_job()
        seen.append((job.id, job.attempt, job.queue))
        await job.set_progress({"step": 1})
        return a + b

    result = await add.enqueue(a=1, b=2)
    assert result == pgqueue.EnqueueResult(result.id, duplicate=False)
    assert seen == [(result.id, 1, "maths")]  # ran before enqueue returned
    job = await queue.get_job(result.id)
    assert job is not None
    assert (job.state, job.attempts, job.result, job.errors) == (JobState.SUCCEEDED, 1, 3, [])
    assert (job.queue, job.priority, job.task, job.args) == ("maths", 3, "add", {"a": 1, "b": 2})
    assert job.progress == {"step": 1}
    assert job.finished_at is not None
    assert (await queue.wait(result.id)).id == result.id
    assert await queue.result(result.id) == 3
    assert queue.inline_jobs.jobs == [job]
    assert queue.inline_jobs.of_task(add) == [job]


async def test_plain_function_runs_in_a_thread_from_enqueue_and_here_from_enqueue_sync(queue):
    threads = []

    @queue.task(name="where")
    def where() -> str:
        threads.append(threading.get_ident())
        return current_job().task

    first = await where.enqueue()
    assert threads[-1] != threading.get_ident()  # never on the loop, as in a worker
    assert await queue.result(first.id) == "where"
    second = await asyncio.to_thread(where.enqueue_sync)
    assert queue.result_sync(second.id) == "where"


def test_sync_face_without_a_loop_runs_async_tasks_on_a_loop_of_their_own(queue):
    @queue.task(name="double")
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    result = double.enqueue_sync(x=21)
    assert queue.result_sync(result.id) == 42
    assert queue.wait_sync(result.id).state is JobState.SUCCEEDED
    assert queue.get_job_sync(result.id) == queue.inline_jobs.get(result.id)
    by_name = queue.enqueue_sync("double", {"x": 1})
    assert queue.result_sync(by_name.id) == 2


async def test_sync_enqueue_of_an_async_task_from_code_running_on_a_loop(queue):
    @queue.task(name="triple")
    async def triple(x: int) -> int:
        return 3 * x

    def helper() -> int:  # sync code called from an async test: its loop is busy
        return queue.result_sync(triple.enqueue_sync(x=2).id)

    assert helper() == 6


async def test_arguments_and_json_are_checked_as_at_any_enqueue(queue):
    ran = []

    @queue.task(name="echo")
    def echo(value: object, tag: str = "") -> object:
        ran.append(value)
        return value

    with pytest.raises(InvalidJobError, match="arguments do not match"):
        await echo.enqueue(nope=1)
    with pytest.raises(InvalidJobError, match="JSON"):
        await echo.enqueue(value=datetime.now(UTC))
    with pytest.raises(InvalidJobError, match="priority"):
        await echo.with_options(priority=10**9).enqueue(value=1)
    with pytest.raises(InvalidJobError, match="item 1"):
        await queue.enqueue_many([echo.job(value=1), pgqueue.JobSpec("echo", "{not json")])
    assert ran == []
    assert queue.inline_jobs.jobs == []  # nothing was written, nothing ran
    # The task gets its arguments as a worker would: decoded from the job's JSON.
    result = await echo.enqueue(value=(1, 2))
    assert await queue.result(result.id) == [1, 2]
    assert ran == [[1, 2]]


async def test_what_a_worker_refuses_fails_the_job_for_good(queue):
    @queue.task(name="strict", max_attempts=5)
    def strict(x: int) -> object:
        return object() if x else x

    # By name, arguments are not checked against the task at enqueue: the run fails.
    bad_args = await queue.enqueue("strict", {"y": 1})
    not_json = await strict.enqueue(x=1)
    unknown = await queue.enqueue("nobody.registered")
    for result, message in (
        (bad_args, "job arguments do not match task strict"),
        (not_json, "task result must be JSON-serialisable"),
        (unknown, "unknown task 'nobody.registered'"),
    ):
        job = await queue.get_job(result.id)
        assert job is not None
        assert (job.state, job.attempts) == (JobState.FAILED, 1)
        assert message in job.errors[-1]["message"]
        assert job.errors[-1]["type"] == "pgqueue.errors.PermanentError"


async def test_failed_attempts_are_recorded_and_retried_at_once(queue):
    calls = []

    @queue.task(name="flaky", max_attempts=3, retry=RetryPolicy(base=3600))
    async def flaky() -> str:
        calls.append(current_job().attempt)
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)}")
        return "done"

    result = await flaky.enqueue()  # an hour's backoff twice, yet no sleep
    assert calls == [1, 2, 3]
    job = await queue.get_job(result.id)
    assert job is not None
    assert (job.state, job.attempts, job.result) == (JobState.SUCCEEDED, 3, "done")
    assert [(e["attempt"], e["type"], e["message"]) for e in job.errors] == [
        (1, "builtins.ValueError", "attempt 1"),
        (2, "builtins.ValueError", "attempt 2"),
    ]
    assert all("Traceback" in e["traceback"] and e["at"] for e in job.errors)


async def test_a_job_failing_for_good_raises_from_result_with_its_cause(queue):
    @queue.task(name="broken", max_attempts=2)
    def broken() -> None:
        raise KeyError("missing")

    @queue.task(name="refused", max_attempts=5)
    def refused() -> None:
        raise PermanentError("no point retrying")

    result = broken.enqueue_sync()
    with pytest.raises(JobFailedError) as failed:
        await queue.result(result.id)
    assert failed.value.state is JobState.FAILED
    assert failed.value.job.attempts == 2
    assert isinstance(failed.value.__cause__, KeyError)
    assert failed.value.error is not None
    assert failed.value.error["type"] == "builtins.KeyError"
    with pytest.raises(JobFailedError):
        queue.result_sync(result.id)

    permanent = await refused.enqueue()
    job = queue.inline_jobs.get(permanent.id)
    assert job is not None
    assert (job.state, job.attempts) == (JobState.FAILED, 1)


async def test_idempotency_keys_and_unique_windows_hold_as_in_the_database(queue):
    runs = []

    @queue.task(name="once", max_attempts=1)
    def once(n: int) -> int:
        runs.append(n)
        if n < 0:
            raise RuntimeError("negative")
        return n

    first = await once.with_options(idempotency_key="k").enqueue(n=1)
    again = await once.with_options(idempotency_key="k").enqueue(n=2)
    assert again == pgqueue.EnqueueResult(first.id, duplicate=True)
    assert runs == [1]
    # A failed job gives its key up: the work can be enqueued afresh.
    failing = await once.with_options(idempotency_key="f").enqueue(n=-1)
    fresh = await once.with_options(idempotency_key="f").enqueue(n=3)
    assert not fresh.duplicate
    assert fresh.id != failing.id
    # A batch folds a repeated key onto its first row, and a held key onto its holder.
    batch = await queue.enqueue_many(
        [
            once.with_options(idempotency_key="b").job(n=4),
            once.with_options(idempotency_key="b").job(n=5),
            once.with_options(idempotency_key="k").job(n=6),
            once.job(n=7),
        ]
    )
    assert [r.duplicate for r in batch] == [False, True, True, False]
    assert batch[1].id == batch[0].id
    assert batch[2].id == first.id
    assert runs == [1, -1, 3, 4, 7]
    # A unique window returns its job for as long as it lasts, whatever it became.
    windowed = once.with_options(unique_for=3600)
    u1 = await windowed.enqueue(n=8)
    u2 = windowed.enqueue_sync(n=8)
    u3 = await windowed.enqueue(n=9)  # other arguments: another key
    assert u2 == pgqueue.EnqueueResult(u1.id, duplicate=True)
    assert not u3.duplicate
    assert runs == [1, -1, 3, 4, 7, 8, 9]


async def test_with_options_and_conn(queue):
    @queue.task(name="opts")
    def opts() -> int:
        return current_job().max_attempts

    tuned = opts.with_options(queue="low", priority=-5, max_attempts=7, delay=3600)
    result = await tuned.enqueue()
    job = await queue.get_job(result.id)
    assert job is not None
    assert (job.queue, job.priority, job.max_attempts, job.result) == ("low", -5, 7, 7)
    assert job.state is JobState.SUCCEEDED  # a delay does not postpone it inline
    # A caller's connection is accepted and not used (the job runs now, not in it).
    in_tx = await opts.with_options(conn=object()).enqueue()
    assert await queue.result(in_tx.id) == 3
    by_name = await queue.enqueue("opts", conn=object(), max_attempts=2)
    assert await queue.result(by_name.id) == 2


async def test_a_job_enqueued_by_a_job_runs_at_once_nested(queue):
    order = []

    @queue.task(name="child")
    async def child(n: int) -> int:
        order.append(f"child {n}")
        return n

    @queue.task(name="parent")
    async def parent() -> int:
        order.append("parent start")
        kid = await child.enqueue(n=5)
        order.append("parent end")
        return await queue.result(kid.id)

    result = await parent.enqueue()
    assert await queue.result(result.id) == 5
    assert order == ["parent start", "child 5", "parent end"]


async def test_waits_that_cannot_end_raise_at_once(queue):
    @queue.task(name="later")
    def later() -> None:
        raise Snooze(60)

    with pytest.raises(JobNotFoundError):
        await queue.wait(12345)
    with pytest.raises(JobNotFoundError):
        queue.result_sync(12345)
    snoozed = await later.enqueue()
    job = await queue.get_job(snoozed.id)
    assert job is not None
    assert (job.state, job.attempts, job.errors) == (JobState.QUEUED, 0, [])
    assert job.run_at > datetime.now(UTC)
    with pytest.raises(InlineModeError, match="queued"):
        await queue.wait(snoozed.id, timeout=30)
    assert await queue.get_job(999) is None


async def test_calls_that_need_the_database_raise_a_typed_error(queue):
    @queue.task(name="tx", transactional=True)
    async def tx(conn: object) -> None:
        pass

    for call in (
        lambda: queue.cancel(1),
        queue.queue_stats,
        lambda: queue.pause("default"),
        lambda: Admin(queue).list_jobs(),
        tx.enqueue,
    ):
        with pytest.raises(InlineModeError):
            await call()
    with pytest.raises(InlineModeError, match=r"retry_sync\(\)"):
        queue.retry_sync(1)
    with pytest.raises(InlineModeError, match="transactional"):
        tx.enqueue_sync()
    with pytest.raises(InlineModeError):
        _ = queue.dsn
    with pytest.raises(InlineModeError):
        async with running_worker(queue):
            pass
    assert queue.inline_jobs.jobs == []
    assert isinstance(InlineModeError("x"), pgqueue.PgQueueError)
    with pytest.raises(InlineModeError):
        _ = pgqueue.Queue(NOWHERE).inline_jobs


async def test_inline_puts_an_apps_queue_in_inline_mode_for_a_while():
    app = pgqueue.Queue(NOWHERE)

    @app.task(name="hello")
    async def hello(name: str) -> str:
        return f"hello {name}"

    with inline(app) as jobs:
        assert isinstance(jobs, InlineJobs)
        assert app.inline
        result = await hello.enqueue(name="you")
        assert await app.result(result.id) == "hello you"
        assert [j.id for j in jobs.jobs] == [result.id]
        jobs.clear()
        assert jobs.jobs == []
    assert not app.inline
    assert app.configured_dsn == NOWHERE
    with inline(app) as again:  # a new store each time
        assert again.jobs == []
    await app.close()
