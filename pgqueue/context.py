"""What a running task can know about its own job: ``pgqueue.current_job()``."""

from __future__ import annotations

import functools
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pgqueue.checks import encode_json
from pgqueue.steps import StepLog, run_step, run_step_sync

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgqueue.steps import StepStore


class ProgressSink(Protocol):
    """Where a running job's progress reports go, and where its steps are kept unless
    it is transactional (the worker's connections; inline mode's memory)."""

    async def report(self, job: RunningJob, progress_json: str) -> None: ...

    def report_sync(self, job: RunningJob, progress_json: str) -> None: ...

    @property
    def steps(self) -> StepStore: ...


@dataclass(frozen=True, slots=True)
class RunningJob:
    """The job the current task runs as. ``cancel_requested()`` turns true when the job
    is cancelled while it runs or passes its deadline: async tasks are interrupted at
    once, and a plain function in a thread should check it and return."""

    id: int
    queue: str
    task: str
    attempt: int
    max_attempts: int
    # A one-item flag, set from the loop and read from the task's thread (one item is
    # read and written atomically): a threading.Event would cost every job a lock.
    _cancelled: list[bool] = field(default_factory=lambda: [False], repr=False, compare=False)
    _progress: ProgressSink | None = field(default=None, repr=False, compare=False)
    # This attempt's durable steps (pgqueue.steps): what it has read and recorded.
    _steps: StepLog = field(default_factory=StepLog, repr=False, compare=False)

    def cancel_requested(self) -> bool:
        return self._cancelled[0]

    def request_cancel(self) -> None:
        self._cancelled[0] = True

    async def set_progress(self, progress: Any) -> None:
        """Record how far the task has got: any JSON (a number, a dict...), shown in
        ``jobs.progress``, by the API and on the dashboard. One UPDATE per call, so call
        it at a human pace; a report that cannot be written is logged, never raised."""
        await self._sink().report(self, encode_json(progress, "progress"))

    def set_progress_sync(self, progress: Any) -> None:
        """:meth:`set_progress` for a plain function running in the worker's threads."""
        self._sink().report_sync(self, encode_json(progress, "progress"))

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this job, as its step ``name``; on every
        later attempt, return the result it recorded instead of calling it again.

        ``fn`` may be async (it is awaited) or plain (called on the event loop: keep it
        short, or pass ``asyncio.to_thread, blocking_fn, arg``). Its result must be JSON;
        what comes back is that JSON decoded, on the first run as on a replay (a tuple
        comes back as a list). An ``fn`` that raises records nothing and runs again at the
        next attempt. In a transactional task the record is written in the task's
        transaction, so it commits with the task's writes or rolls back with them.

        Errors: :class:`~pgqueue.steps.InvalidStepError` for a name that is not a string
        of 1-255 characters without NUL (or one running already in this attempt),
        :class:`~pgqueue.steps.StepResultError` (the job fails for good) for a result
        that is not JSON, :class:`~pgqueue.worker.steps.JobLostError` when the job was
        rescued or cancelled while ``fn`` ran (nothing recorded; let it propagate). See
        :mod:`pgqueue.steps` for the rules."""
        call = functools.partial(fn, *args, **kwargs)
        return await run_step(self._step_store(), self._steps, (self.id, self.attempt), name, call)

    def step_sync(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`step` for a plain function running in the worker's threads: ``fn``
        must be a plain function too."""
        call = functools.partial(fn, *args, **kwargs)
        return run_step_sync(self._step_store(), self._steps, (self.id, self.attempt), name, call)

    def use_transaction(self, store: StepStore) -> None:
        """Keep this attempt's steps in ``store`` (a transactional task's connection):
        for the worker, before it calls the task."""
        self._steps.transaction = store

    def _step_store(self) -> StepStore:
        if self._steps.transaction is not None:
            return self._steps.transaction
        if self._progress is None:
            raise RuntimeError(
                "durable steps need the worker's connections: not available in process=True tasks"
            )
        return self._progress.steps

    def _sink(self) -> ProgressSink:
        if self._progress is None:
            raise RuntimeError(
                "progress reports need the worker's connections: not available in "
                "process=True tasks"
            )
        return self._progress

    def fields(self) -> tuple[int, str, str, int, int]:
        """What a process needs to make its own copy (the flag does not travel)."""
        return (self.id, self.queue, self.task, self.attempt, self.max_attempts)


_current: ContextVar[RunningJob] = ContextVar("pgqueue_current_job")


def current_job() -> RunningJob:
    """The job being run, from inside a task (async or sync)."""
    try:
        return _current.get()
    except LookupError:
        raise LookupError("current_job() is only available inside a running pgqueue task") from None


def enter_job(job: RunningJob) -> None:
    _current.set(job)
