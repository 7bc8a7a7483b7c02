"""Coming from Celery: each Celery idiom next to its pgqueue equivalent, runnable.

    python examples/from_celery.py [DSN]     # the embedded server when no DSN is given

Every function below is one row of the README's "Coming from Celery" table; ``main``
runs them all against a real database with a real worker, and checks what each did
(tests/test_examples.py runs it). The Celery line each replaces is in its docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pgqueue
from pgqueue import PermanentError, RetryPolicy, chain, chord, group, migrate
from pgqueue.testing import inline, running_worker, use_database, wait_for_job

queue = pgqueue.Queue()


@queue.task(name="celery.add")
async def add(a: int, b: int) -> int:
    return a + b


@queue.task(name="celery.total")
async def total(parts: list[int]) -> int:
    return sum(parts)


@queue.task(name="celery.double")
async def double(previous: int) -> int:
    return previous * 2


# autoretry_for=(IOError,), retry_backoff=True, max_retries=3
@queue.task(name="celery.flaky", max_attempts=4, retry=RetryPolicy(base=0.01, jitter=0))
async def flaky(fail_times: int) -> str:
    job = pgqueue.current_job()
    if job.attempt <= fail_times:
        raise OSError(f"attempt {job.attempt} failed")  # any exception retries
    return f"succeeded on attempt {job.attempt}"


@queue.task(name="celery.refuse")
async def refuse() -> None:
    raise PermanentError("bad input: retrying cannot help")  # no retry, fails for good


@queue.task(name="celery.sleepy")
async def sleepy() -> None:
    await asyncio.sleep(60)  # cancelled at once when revoked


# beat_schedule = {"nightly": {"task": "...", "schedule": crontab(hour=3)}}: every worker
# runs the scheduler, and a unique constraint gives each tick exactly one job.
@queue.periodic("0 3 * * *", timezone="Europe/Paris", name="celery.nightly")
@queue.task(name="celery.nightly_report")
async def nightly_report() -> None: ...


async def delay_and_apply_async() -> list[pgqueue.EnqueueResult]:
    """``add.delay(2, 3)``; ``add.apply_async((2, 3), countdown=10, queue="math",
    priority=5)``; ``eta=``. Arguments are keywords (JSON), priority higher runs first."""
    now_result = await add.enqueue(a=2, b=3)
    later = await add.with_options(delay=10, queue="math", priority=5).enqueue(a=2, b=3)
    at = await add.with_options(run_at=datetime.now(UTC) + timedelta(hours=1)).enqueue(a=1, b=1)
    return [now_result, later, at]


async def async_result(job_id: int) -> tuple[Any, str]:
    """``AsyncResult(id).get(timeout=10)`` and ``.state``."""
    value = await queue.result(job_id, timeout=10)
    job = await queue.wait(job_id, timeout=10)  # the finished Job
    return value, job.state.value


async def canvas() -> tuple[Any, Any]:
    """``chain(add.s(2, 3), double.s())()`` and ``chord([add.s(i, i) for i in
    range(3)])(total.s())``: the previous results arrive in the argument
    ``parent_results_arg`` names; the whole graph is written in one statement."""
    steps = chain(add.job(a=2, b=3), double.with_options(parent_results_arg="previous").job())
    chained = await queue.enqueue_workflow(steps)
    fan_in = chord(
        group(*(add.job(a=i, b=i) for i in range(3))),
        total.with_options(parent_results_arg="parts").job(),
    )
    chorded = await queue.enqueue_workflow(fan_in)
    return (
        await queue.result(chained.last_id, timeout=10),
        await queue.result(chorded.last_id, timeout=10),
    )


async def retries() -> tuple[str, str]:
    """``autoretry_for``/``retry_backoff``/``max_retries``: every exception retries, with
    the task's RetryPolicy, up to ``max_attempts``; PermanentError fails at once."""
    retried = await flaky.enqueue(fail_times=2)
    refused = await refuse.enqueue()
    value = await queue.result(retried.id, timeout=10)
    try:
        await queue.result(refused.id, timeout=10)
    except pgqueue.JobFailedError as exc:
        return value, exc.state.value
    raise AssertionError("refuse() should have failed")


async def rate_limit() -> pgqueue.QueueLimit:
    """``@app.task(rate_limit="10/m")``, per worker in Celery: here one limit held in the
    database for every worker of the queue (concurrency too, and per key)."""
    return await queue.set_limit("emails", rate="10/m", concurrency=5)


async def revoke() -> str:
    """``app.control.revoke(id, terminate=True)``: a running async task is cancelled at
    once; a plain function reads ``current_job().cancel_requested()``."""
    started = await sleepy.enqueue()
    await wait_for_job(queue, started.id, frozenset({pgqueue.JobState.RUNNING}), timeout=10)
    await queue.cancel(started.id)
    job = await queue.wait(started.id, timeout=10)
    return job.state.value


async def always_eager() -> int:
    """``task_always_eager = True``: inline mode runs each job inside its enqueue, in
    memory, with the same checks, results and errors."""
    with inline(queue):
        result = await add.enqueue(a=20, b=22)
        value: int = await queue.result(result.id)
    return value


async def main(dsn: str | None = None) -> dict[str, Any]:
    """Run every row against ``dsn`` (default: the Queue's own, the embedded server when
    none is configured) and return what each did; raise when one did not do what the
    README says."""
    with use_database(queue, dsn) if dsn is not None else contextlib.nullcontext(queue):
        migrate.upgrade(queue.dsn)
        done: dict[str, Any] = {}
        async with running_worker(queue, queues=["default", "math"], concurrency=8):
            now_result, later, at = await delay_and_apply_async()
            done["async_result"] = await async_result(now_result.id)
            later_job, at_job = await queue.get_job(later.id), await queue.get_job(at.id)
            done["apply_async"] = (
                getattr(later_job, "queue", None),
                getattr(later_job, "priority", None),
                getattr(getattr(at_job, "state", None), "value", None),
            )
            done["canvas"] = await canvas()
            done["retries"] = await retries()
            done["revoke"] = await revoke()
        done["rate_limit"] = str((await rate_limit()).rate)
        done["beat"] = sorted(queue.periodic_schedules)
        done["always_eager"] = await always_eager()
        await queue.close()
    expected = {
        "async_result": (5, "succeeded"),
        "apply_async": ("math", 5, "queued"),
        "canvas": (10, 6),
        "retries": ("succeeded on attempt 3", "failed"),
        "revoke": "cancelled",
        "rate_limit": "10/m",
        "beat": ["celery.nightly"],
        "always_eager": 42,
    }
    if done != expected:
        raise AssertionError(f"expected {expected}, got {done}")
    return done


if __name__ == "__main__":
    for row, outcome in asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None)).items():
        print(f"{row:14} {outcome}")  # noqa: T201 - the script's output
