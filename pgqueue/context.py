"""What a running task can know about its own job: ``pgqueue.current_job()``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from pgqueue.checks import encode_json


class ProgressSink(Protocol):
    """Where a running job's progress reports go (the worker's connections)."""

    async def report(self, job: RunningJob, progress_json: str) -> None: ...

    def report_sync(self, job: RunningJob, progress_json: str) -> None: ...


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
