"""Error reporting: every failed attempt of a job goes to an error reporter (Sentry and
the like) through ``queue.on_failure``. Runnable without Sentry: the reporter prints.

    python examples/error_reporting.py [DSN]     # the embedded server when no DSN is given

With Sentry, the reporter is (``pip install sentry-sdk``; ``sentry_sdk.init(dsn=...)``
once at start-up, in the worker's process too)::

    import sentry_sdk

    @queue.on_failure
    def report_to_sentry(job: pgqueue.FailedJob, exc: BaseException) -> None:
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("pgqueue.task", job.task)
            scope.set_tag("pgqueue.queue", job.queue)
            scope.set_context("pgqueue.job", {
                "id": job.id, "attempt": job.attempt, "max_attempts": job.max_attempts,
                "final": job.final, "args": job.args,
            })
            # Retried attempts as warnings, the last one as an error (or report only
            # `if job.final:`, to be told once per job rather than once per attempt).
            scope.level = "error" if job.final else "warning"
            sentry_sdk.capture_exception(exc)

``capture_exception`` only queues the event (Sentry's own thread sends it), so the hook
is quick enough to run on the worker's loop; a slower reporter can be ``async def``.
``pgqueue worker error_reporting:queue`` calls the hooks registered on the Queue it loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import pgqueue
from pgqueue import RetryPolicy, migrate
from pgqueue.testing import running_worker, use_database, wait_for_job

queue = pgqueue.Queue()
# What the reporter was given (the example's main returns it; a real one sends it).
reported: list[dict[str, Any]] = []


@queue.on_failure
def report(job: pgqueue.FailedJob, exc: BaseException) -> None:
    """A Sentry-style reporter: one event per failed attempt, with the job's context."""
    event = {
        "task": job.task,
        "job_id": job.id,
        "attempt": job.attempt,
        "level": "error" if job.final else "warning",
        "exception": f"{type(exc).__name__}: {exc}",
    }
    reported.append(event)
    print(f"reported {event}")  # noqa: T201 - stands in for sentry_sdk.capture_exception


@queue.task(name="example.charge", max_attempts=3, retry=RetryPolicy(base=0.01, jitter=0))
async def charge(order: int) -> str:
    attempt = pgqueue.current_job().attempt
    if order == 13:
        raise ConnectionError(f"payment provider unreachable (attempt {attempt})")
    return f"charged order {order}"


async def main(dsn: str | None = None) -> list[dict[str, Any]]:
    """Run a failing job (three attempts) and a good one on a real worker; return what
    the reporter was given."""
    reported.clear()
    with use_database(queue, dsn) if dsn is not None else contextlib.nullcontext(queue):
        migrate.upgrade(queue.dsn)
        async with running_worker(queue, poll_interval=0.2):
            failing = await charge.enqueue(order=13)
            fine = await charge.enqueue(order=7)
            await wait_for_job(queue, failing.id)
            await wait_for_job(queue, fine.id)
    return reported


if __name__ == "__main__":
    events = asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
    print(f"{len(events)} failed attempts reported")  # noqa: T201 - the script's output
