"""A job's life in a worker once claimed: run it, then record its outcome.

:class:`Jobs` holds the jobs in flight. Each runs as an asyncio task (the call itself
is :class:`~pgqueue.worker.execution.TaskRunner`'s); its outcome goes to the
:class:`~pgqueue.worker.completer.Completer`, which writes outcomes in batches. A job
can also end by a cancel request, by its worker giving it up (declared dead, or fenced
for want of a heartbeat: then it is no longer ours and nothing is written), or by the
worker stopping before it finished.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue.context import RunningJob
from pgqueue.errors import JobTimeoutError, PermanentError, Snooze
from pgqueue.hooks import FailedJob
from pgqueue.retry import RetryPolicy, retry_in
from pgqueue.worker.outcome import CommitOutcomeUnknownError, OwnershipLostError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from pgqueue.hooks import Hooks, JobRun
    from pgqueue.jobs import ClaimedJob
    from pgqueue.tasks import Task
    from pgqueue.worker.completer import Completer
    from pgqueue.worker.core import WorkerStats
    from pgqueue.worker.execution import ProgressWriter, TaskRunner
    from pgqueue.worker.outcome import Ran

_DEFAULT_RETRY = RetryPolicy()


def error_entry(attempt: int, exc: BaseException) -> str:
    """The JSON of one ``errors`` entry (the database adds ``at``)."""
    return json.dumps(
        {
            "attempt": attempt,
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": storable_text(str(exc) or type(exc).__name__),
            "traceback": storable_text("".join(traceback.format_exception(exc))),
        }
    )


def storable_text(text: str) -> str:
    """Text jsonb stores: a task's error message is whatever it raised, and a NUL or a
    lone surrogate in it would make the database refuse the whole batch of outcomes
    it is written with. A NUL becomes U+FFFD, a lone surrogate "?"."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class _Interrupted(Exception):  # noqa: N818 - it is a reason, recorded as the error
    """A job still running when the grace period ended."""


class Jobs:
    """The jobs this worker is running, from their start to their recorded outcome."""

    def __init__(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        *,
        runner: TaskRunner,
        completer: Completer,
        progress: ProgressWriter,
        stats: WorkerStats,
        worker_id: Callable[[], str],
        on_outcome_lost: Callable[[], None],
        hooks: Hooks,
    ) -> None:
        self._tasks = tasks
        self._runner = runner
        self._completer = completer
        self._progress = progress
        self._stats = stats
        self._worker_id = worker_id
        self._on_outcome_lost = on_outcome_lost
        # The Queue's failure hooks and instrumentations (pgqueue.hooks).
        self._hooks = hooks
        # Resolved once, when the worker starts (structlog is configured by then): the
        # lazy proxy get_logger returns would resolve it again on every job's line.
        self._log = structlog.get_logger("pgqueue.worker").bind()
        self.running: dict[int, asyncio.Task[None]] = {}
        # Set whenever a job ends: the claim loop waits on it when every slot is taken.
        self.slot_freed = asyncio.Event()
        self._contexts: dict[int, RunningJob] = {}
        # Jobs cancelled while running here (by NOTIFY or the poll): already marked
        # cancelled in the database, so their outcomes are not written.
        self._cancelled: set[int] = set()
        # Jobs given up (by id, with why) when this worker learnt it had been declared
        # dead or fenced itself: rescued, or about to be, and perhaps running elsewhere
        # already, so their outcomes are not ours to write.
        self._lost: dict[int, str] = {}
        # Jobs that waited for a thread or a process when the worker stopped: they never
        # started, and go back to the queue as if never claimed.
        self._withdrawn: set[int] = set()
        # Set once running jobs are being cancelled because the worker is stopping.
        self.interrupting = False

    def start(self, job: ClaimedJob) -> None:
        self.running[job.id] = asyncio.create_task(self._execute(job))

    def known_ids(self) -> list[int]:
        """Jobs this worker knows it holds: running, or with an outcome not yet written."""
        return [*self.running, *self._completer.pending_ids()]

    # --- endings from outside --------------------------------------------------------

    def cancel(self, job_id: int) -> None:
        """A cancel request for one of ours (the database already says cancelled)."""
        task = self.running.get(job_id)
        if task is None or job_id in self._cancelled:
            return
        self._cancelled.add(job_id)
        context = self._contexts.get(job_id)
        if context is not None:
            context.request_cancel()  # what a sync task can see
        task.cancel()

    def abandon_all(self, reason: str) -> None:
        """Give up every running job: this worker was declared dead (its jobs were
        rescued) or fenced itself (they may be, any moment)."""
        self.abandon(list(self.running), reason)

    def abandon(self, job_ids: Iterable[int], reason: str) -> None:
        """Give up these running jobs (no longer ours in the database, or about to be).
        An async task is cancelled; cancelling a process task's call ends its process;
        a function in a thread cannot be stopped: it is told (``cancel_requested()``)
        and left to finish. No outcome of theirs is written."""
        for job_id in job_ids:
            task = self.running.get(job_id)
            if task is None:  # ended meanwhile
                continue
            self._lost[job_id] = reason
            context = self._contexts.get(job_id)
            if context is not None:
                context.request_cancel()
            task.cancel()

    def withdraw_unstarted(self) -> list[int]:
        """The worker is stopping: the jobs still waiting for a thread or a process will
        not start. Their runs end here, with no outcome; the ids, to hand back."""
        ids = [job_id for job_id in self._runner.waiting if job_id in self.running]
        for job_id in ids:
            self._withdrawn.add(job_id)
            self.running[job_id].cancel()
        return ids

    def interrupt_all(self) -> None:
        """Stop at once: every running job is cancelled and recorded as interrupted."""
        self.interrupting = True
        for task in self.running.values():
            task.cancel()

    async def drain(self, grace_period: float) -> None:
        """Wait for the running jobs, up to ``grace_period`` (0: not at all); then
        interrupt those still running."""
        if not self.running:
            return
        tasks = list(self.running.values())
        self._log.info("worker_draining", running=len(tasks), grace_period=grace_period)
        _, pending = await asyncio.wait(tasks, timeout=grace_period or None)
        if grace_period == 0:
            pending = {t for t in tasks if not t.done()}
        if pending:
            self.interrupting = True
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=5.0)

    # --- one job -----------------------------------------------------------------------

    async def _execute(self, job: ClaimedJob) -> None:
        # The instrumentations' context is entered here, in the job's own asyncio task:
        # what they make current (a span) is current for the task's code, in its thread
        # too (execution.py runs it in a copy of this context).
        try:
            with self._hooks.run(job) as run:
                await self._attempt(job, run)
        finally:
            del self.running[job.id]
            self._contexts.pop(job.id, None)
            self.slot_freed.set()

    async def _attempt(self, job: ClaimedJob, run: JobRun) -> None:
        task = self._tasks.get(job.task)
        started = time.perf_counter()
        # One info line per job: its outcome. The start is for debugging. A success logs
        # its fields directly: a bound logger per job would cost more than the line.
        self._log.debug(
            "job_started", job_id=job.id, queue=job.queue, task=job.task, attempt=job.attempt
        )
        try:
            ran = await self._call(task, job)
        except asyncio.CancelledError as exc:
            if not self._after_cancellation(self._job_log(job), task, job, run, exc):
                raise
        except Snooze as snooze:
            run.outcome = "snoozed"
            self._completer.snoozed(job.id, job.attempt, snooze.after)
            self._stats.snoozed += 1
            self._job_log(job).info("job_snoozed", after=snooze.after)
        except OwnershipLostError:
            run.outcome = "abandoned"
            # Rescued or cancelled while it ran: its transaction was rolled back.
            self._job_log(job).warning(
                "job_abandoned", reason="no longer this worker's job at commit"
            )
        except CommitOutcomeUnknownError as exc:
            run.outcome, run.error = "abandoned", exc
            # Committed or not, we cannot tell: if the job is still ours in the
            # database it goes back to the queue before the next claim.
            self._job_log(job).warning("job_outcome_unknown", error=str(exc))
            self._on_outcome_lost()
        except Exception as exc:
            self._record_failure(self._job_log(job), task, job, exc, run)
        else:
            run.outcome = "succeeded"
            if not ran.committed:
                self._completer.succeeded(job.id, job.attempt, ran.result_json)
            self._stats.succeeded += 1
            self._log.info(
                "job_succeeded",
                job_id=job.id,
                queue=job.queue,
                task=job.task,
                attempt=job.attempt,
                duration_ms=round((time.perf_counter() - started) * 1e3, 3),
            )

    def _job_log(self, job: ClaimedJob) -> Any:
        return self._log.bind(job_id=job.id, queue=job.queue, task=job.task, attempt=job.attempt)

    def _after_cancellation(
        self,
        log: Any,
        task: Task[Any, Any] | None,
        job: ClaimedJob,
        run: JobRun,
        exc: asyncio.CancelledError,
    ) -> bool:
        """Account for a job whose run was cancelled; False if the cancellation was not
        ours (the worker's own task is being cancelled) and must go on up."""
        if job.id in self._withdrawn:
            run.outcome = "withdrawn"
            self._withdrawn.discard(job.id)
        elif job.id in self._cancelled:
            run.outcome, run.error = "cancelled", exc
            self._cancelled.discard(job.id)
            log.info("job_cancelled")
        elif job.id in self._lost:
            run.outcome = "abandoned"
            log.warning("job_abandoned", reason=self._lost.pop(job.id))
        elif self.interrupting:
            self._stats.interrupted += 1
            self._record_failure(
                log, task, job, _Interrupted("worker stopped before the job finished"), run
            )
        else:
            return False
        return True

    async def _call(self, task: Task[Any, Any] | None, job: ClaimedJob) -> Ran:
        if task is None:
            raise PermanentError(
                f"unknown task {job.task!r}: no task of that name is registered with this "
                "worker's Queue"
            )
        if not task.accepts(job.args):
            try:
                task.signature.bind(**job.args)
            except TypeError as exc:
                raise PermanentError(f"job arguments do not match task {job.task}: {exc}") from exc
        running = RunningJob(
            job.id, job.queue, job.task, job.attempt, job.max_attempts, _progress=self._progress
        )
        self._contexts[job.id] = running
        return await self._runner.run(task, job, running, self._worker_id())

    def _record_failure(
        self,
        log: Any,
        task: Task[Any, Any] | None,
        job: ClaimedJob,
        exc: BaseException,
        run: JobRun,
    ) -> None:
        permanent = isinstance(exc, PermanentError)
        if isinstance(exc, _Interrupted):
            # Not the task's fault: come back at once if attempts are left.
            wait = None if job.attempt >= job.max_attempts else 0.0
        else:
            policy = task.retry if task is not None else _DEFAULT_RETRY
            wait = retry_in(job.attempt, job.max_attempts, policy, permanent=permanent)
        self._completer.failed(job.id, job.attempt, error_entry(job.attempt, exc), wait)
        message = f"{type(exc).__name__}: {exc}"
        if wait is None:
            self._stats.failed += 1
            log.error("job_failed", error=message, permanent=permanent)
        else:
            self._stats.retried += 1
            log.warning("job_retry_scheduled", error=message, retry_in=round(wait, 3))
        run.error, run.retry_in = exc, wait
        if isinstance(exc, JobTimeoutError):
            run.outcome = "timed_out"
        else:
            run.outcome = "failed" if wait is None else "retrying"
        # After the outcome is handed to the completer: a hook never delays it.
        if self._hooks.failure_hooks:
            self._hooks.failed(FailedJob.of(job, wait), exc)
