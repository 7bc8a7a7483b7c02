"""Failure hooks (``queue.on_failure``, pgqueue.hooks): called on every failed attempt
of a real worker (retried, final, timed out) with the job and the exception, never on
success; sync and async hooks; a hook that raises breaks nothing; inline mode calls
them too; the example reporter (examples/error_reporting.py) runs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
from examplekit import loaded_example
from workerproc import WorkerProcess

import pgqueue
from pgqueue import FailedJob, JobState, JobTimeoutError, PermanentError, RetryPolicy
from pgqueue.testing import inline, running_worker, wait_for_job

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pgqueue.hooks import EnqueueCall, JobRun

FAST_RETRY = RetryPolicy(base=0.01, factor=1.0, max_delay=0.05, jitter=0)


async def test_a_sync_hook_gets_every_failed_attempt_with_its_job_and_exception(queue):
    calls: list[tuple[FailedJob, BaseException]] = []
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    @queue.on_failure
    def record(job: FailedJob, exc: BaseException) -> None:
        threads.add(threading.get_ident())
        calls.append((job, exc))

    @queue.task(name="hooks.doomed", max_attempts=3, retry=FAST_RETRY)
    async def doomed(n: int) -> None:
        raise ValueError(f"bad n={n} on attempt {pgqueue.current_job().attempt}")

    @queue.task(name="hooks.fine")
    def fine() -> str:
        return "ok"

    async with running_worker(queue, poll_interval=0.2):
        failing = await doomed.enqueue(n=7)
        good = await fine.enqueue()
        assert (await wait_for_job(queue, failing.id)).state is JobState.FAILED
        assert (await wait_for_job(queue, good.id)).state is JobState.SUCCEEDED
    assert [job.attempt for job, _ in calls] == [1, 2, 3]  # never for the good job
    assert {job.id for job, _ in calls} == {failing.id}
    assert [str(exc) for _, exc in calls] == [f"bad n=7 on attempt {a}" for a in (1, 2, 3)]
    assert all(type(exc) is ValueError for _, exc in calls)
    first, last = calls[0][0], calls[-1][0]
    assert (first.task, first.queue, first.args, first.max_attempts) == (
        "hooks.doomed",
        "default",
        {"n": 7},
        3,
    )
    assert [job.final for job, _ in calls] == [False, False, True]
    assert first.retry_in is not None
    assert last.retry_in is None
    assert threads == {loop_thread}  # on the worker's loop, as documented


async def test_an_async_hook_a_permanent_error_and_a_timeout(queue):
    seen: list[tuple[int, str, bool]] = []
    done = asyncio.Event()

    async def record(job: FailedJob, exc: BaseException) -> None:
        await asyncio.sleep(0)  # really async
        seen.append((job.attempt, type(exc).__name__, job.final))
        if len(seen) == 3:
            done.set()

    queue.on_failure(record)

    @queue.task(name="hooks.refuse", max_attempts=5)
    async def refuse() -> None:
        raise PermanentError("never")

    @queue.task(name="hooks.slow", max_attempts=2, timeout=0.05, retry=FAST_RETRY)
    async def slow() -> None:
        await asyncio.sleep(30)

    async with running_worker(queue, poll_interval=0.2):
        refused = await refuse.enqueue()
        timed = await slow.enqueue()
        await wait_for_job(queue, refused.id)
        await wait_for_job(queue, timed.id)
        await asyncio.wait_for(done.wait(), timeout=10)
    assert sorted(seen) == sorted(
        [(1, "PermanentError", True), (1, "JobTimeoutError", False), (2, "JobTimeoutError", True)]
    )


async def test_a_hook_that_raises_breaks_neither_the_worker_nor_the_other_hooks(queue):
    others: list[int] = []

    @queue.on_failure
    def broken(job: FailedJob, exc: BaseException) -> None:
        raise RuntimeError("the reporter is down")

    @queue.on_failure
    async def broken_async(job: FailedJob, exc: BaseException) -> None:
        raise RuntimeError("the async reporter is down")

    @queue.on_failure
    def counting(job: FailedJob, exc: BaseException) -> None:
        others.append(job.attempt)

    @queue.task(name="hooks.flaky", max_attempts=3, retry=FAST_RETRY)
    async def flaky() -> str:
        attempt = pgqueue.current_job().attempt
        if attempt < 3:
            raise ConnectionError(f"try {attempt}")
        return "third time lucky"

    with structlog.testing.capture_logs() as logs:
        async with running_worker(queue, poll_interval=0.2) as worker:
            result = await flaky.enqueue()
            job = await wait_for_job(queue, result.id)
            after = await wait_for_job(queue, (await flaky.enqueue()).id)
    assert (job.state, job.result, job.attempts) == (JobState.SUCCEEDED, "third time lucky", 3)
    assert after.state is JobState.SUCCEEDED
    assert others == [1, 2, 1, 2]
    assert worker.stats.retried == 4
    failed_hooks = [e for e in logs if e["event"] == "hook_failed"]
    assert {e["hook"].rsplit(".", 1)[-1] for e in failed_hooks} >= {"broken", "broken_async"}
    assert all(e["log_level"] == "error" for e in failed_hooks)


def test_inline_mode_calls_the_hooks_from_both_faces():
    queue = pgqueue.Queue(inline=True)
    calls: list[tuple[int, bool]] = []
    async_calls: list[int] = []

    @queue.on_failure
    def record(job: FailedJob, exc: BaseException) -> None:
        calls.append((job.attempt, job.final))

    @queue.on_failure
    async def record_async(job: FailedJob, exc: BaseException) -> None:
        async_calls.append(job.attempt)

    @queue.task(name="hooks.inline_doomed", max_attempts=2)
    def doomed() -> None:
        raise KeyError("missing")

    queue.enqueue_sync("hooks.inline_doomed")
    assert calls == [(1, False), (2, True)]
    assert async_calls == [1, 2]

    async def enqueue_async() -> None:
        await doomed.enqueue()
        await asyncio.sleep(0.05)  # the async hooks' tasks run on this loop

    asyncio.run(enqueue_async())
    assert calls[2:] == [(1, False), (2, True)]
    assert async_calls[2:] == [1, 2]


def test_the_testing_inline_helper_calls_the_apps_hooks():
    queue = pgqueue.Queue()
    seen: list[str] = []
    queue.on_failure(lambda _job, exc: seen.append(type(exc).__name__))

    @queue.task(name="hooks.helper", max_attempts=1)
    def boom() -> None:
        raise JobTimeoutError("pretend")

    with inline(queue):
        boom.enqueue_sync()
    assert seen == ["JobTimeoutError"]


async def test_the_error_reporting_example_reports_every_failed_attempt(dsn, capsys):
    with loaded_example("error_reporting.py") as module:
        events = await module.main(dsn)
    assert [(e["task"], e["attempt"], e["level"]) for e in events] == [
        ("example.charge", 1, "warning"),
        ("example.charge", 2, "warning"),
        ("example.charge", 3, "error"),
    ]
    assert "ConnectionError: payment provider unreachable (attempt 3)" in events[-1]["exception"]
    assert capsys.readouterr().out.count("reported ") == 3


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_on_failure_returns_the_hook_for_use_as_a_decorator(hook_kind):
    queue = pgqueue.Queue(inline=True)

    def sync_hook(job: FailedJob, exc: BaseException) -> None: ...

    async def async_hook(job: FailedJob, exc: BaseException) -> None: ...

    hook = sync_hook if hook_kind == "sync" else async_hook
    assert queue.on_failure(hook) is hook
    assert queue.hooks.failure_hooks == [hook]


class _BrokenInstrumentation:
    """An instrumentation whose context managers fail on the way in or out."""

    def __init__(self) -> None:
        self.exits: list[str | None] = []

    @contextlib.contextmanager
    def enqueue(self, call: EnqueueCall) -> Iterator[None]:  # noqa: ARG002 - the interface
        raise RuntimeError("cannot start the enqueue span")
        yield  # pragma: no cover - a generator that raises first

    @contextlib.contextmanager
    def run(self, run: JobRun) -> Iterator[None]:
        yield
        self.exits.append(run.outcome)
        raise RuntimeError("cannot end the run span")


async def test_an_instrumentation_that_raises_breaks_neither_enqueue_nor_run(queue):
    broken = _BrokenInstrumentation()
    queue.instrument(broken)

    @queue.task(name="hooks.instrumented")
    async def instrumented() -> str:
        return "ran"

    with structlog.testing.capture_logs() as logs:
        async with running_worker(queue, poll_interval=0.2):
            result = await instrumented.enqueue()
            job = await wait_for_job(queue, result.id)
    assert job.result == "ran"
    assert broken.exits == ["succeeded"]
    stages = sorted(e["stage"] for e in logs if e["event"] == "hook_failed")
    assert stages == ["enter", "exit"]


def test_pgqueue_worker_runs_the_hooks_of_the_queue_it_loads(dsn):
    """``pgqueue worker error_reporting:queue``, a real process: the reporter registered
    on the example's Queue prints each failed attempt."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    worker = WorkerProcess(
        "error_reporting:queue",
        dsn,
        "--poll-interval",
        "0.2",
        cwd=examples,
        env={"PYTHONPATH": str(examples)},
    )
    try:
        with pgqueue.Queue(dsn) as queue:
            result = queue.enqueue_sync("example.charge", {"order": 13})
            job = queue.wait_sync(result.id, timeout=30)
        assert job.state is JobState.FAILED
        assert worker.stop() == 0
        reports = [
            line
            for line in worker.log_path.read_text().splitlines()
            if line.startswith("reported ")
        ]
    finally:
        worker.close()
    assert len(reports) == 3
    assert "'level': 'error'" in reports[-1]
    assert f"'job_id': {job.id}" in reports[-1]
