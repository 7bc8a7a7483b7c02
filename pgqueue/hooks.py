"""Hooks: what an instrumentation (tracing, metrics) and an error reporter (Sentry and the
like) plug into, registered on the :class:`~pgqueue.Queue`, so that the worker started
with ``pgqueue worker app:queue`` runs them too. Not tied to any one library:
:mod:`pgqueue.contrib.opentelemetry` is built on them.

- **Failure hooks**, ``queue.on_failure(fn)``: ``fn(job, exc)`` is called on every failed
  attempt (one to be retried, the last one, a timeout, an attempt cut short by the
  worker stopping), with a :class:`FailedJob` and the exception the attempt raised. ``fn``
  may be a plain function or an ``async def``. Not called on success, snooze or cancel.
- **Instrumentations**, ``queue.instrument(obj)``: ``obj`` is an :class:`Instrumentation`,
  whose ``enqueue(call)`` is a context manager around each enqueue (one job, or one bulk
  batch: :class:`EnqueueCall`, whose jobs it may give a trace context before they are
  written, and which holds the results once written), and ``run(run)`` a context manager
  around each attempt a worker runs (:class:`JobRun`, told the outcome before it exits).
  The run's context manager is entered in the attempt's own context: a value it sets in
  a contextvar (the current span) is what the task's code sees, in a thread too.
- **Claim hooks**, ``queue.on_claim(fn)``: ``fn(claim)`` is called by a worker after each
  claim it made, with a :class:`ClaimRound` (the queues, the jobs asked for and got, the
  round trip's seconds): for a histogram of claim latency, or a count of empty claims.
  Called on the claim loop, between claims: keep a sync one quick (record a number), or
  make it ``async``. Inline mode claims nothing and calls none.

A hook or an instrumentation that raises is logged (``hook_failed``, with the
exception) and never breaks an enqueue nor the worker. Sync failure hooks run on the
worker's event loop: keep them quick (Sentry's ``capture_exception`` only queues the
event) or make them ``async``. Async hooks run as tasks of the worker's loop, so that a
slow report never holds a job's slot; a stopping worker gives those still running a few
seconds (``HOOKS_GRACE_SECONDS``) to end. Inline mode (``Queue(inline=True)``) runs both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import structlog

from pgqueue.job_options import OPTIONS_BY_NAME
from pgqueue.jobs import JobSpec

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator, Mapping
    from types import TracebackType

    from pgqueue.jobs import ClaimedJob, EnqueueResult

__all__ = [
    "ClaimHook",
    "ClaimKind",
    "ClaimRound",
    "EnqueueCall",
    "FailedJob",
    "FailureHook",
    "Hooks",
    "Instrumentation",
    "JobRun",
    "RunOutcome",
]

# What one attempt came to, as a JobRun is told: retrying and failed are a failed attempt
# with and without a retry to come; timed_out one that ran past its timeout (retried or
# not: see JobRun.retry_in); snoozed asked to run later; cancelled was cancelled while it
# ran; abandoned is no longer this worker's (rescued, or its commit's outcome unknown);
# withdrawn never started (the worker stopped while it waited for a thread).
RunOutcome = Literal[
    "succeeded",
    "retrying",
    "failed",
    "timed_out",
    "snoozed",
    "cancelled",
    "abandoned",
    "withdrawn",
]

_log = structlog.get_logger("pgqueue.hooks")


@dataclasses.dataclass(frozen=True, slots=True)
class FailedJob:
    """The job of a failed attempt, as a failure hook gets it."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    attempt: int  # the attempt that failed, from 1
    max_attempts: int
    # Seconds until the next attempt; None when this was the last one (the job failed).
    retry_in: float | None
    trace_context: dict[str, str] | None = None

    @property
    def final(self) -> bool:
        """Whether the job failed for good with this attempt (no retry to come)."""
        return self.retry_in is None

    @classmethod
    def of(cls, job: ClaimedJob, retry_in: float | None) -> FailedJob:
        return cls(
            job.id,
            job.queue,
            job.task,
            job.args,
            job.attempt,
            job.max_attempts,
            retry_in,
            job.trace_context,
        )


# fn(job, exc): a plain function, or one returning an awaitable (async def).
FailureHook = Callable[[FailedJob, BaseException], Any]

# "claim": the claim loop's own claim statement. "refill": a limited queue's claim made
# in the statement that writes the worker's outcomes (pgqueue/worker/completer.py).
ClaimKind = Literal["claim", "refill"]


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimRound:
    """One claim a worker made, as a claim hook gets it. ``seconds`` is the round trip of
    the statement that claimed (for a refill, the whole write of outcomes it rode on),
    measured by the worker, so it includes the network and the server's queueing but not
    the wait for a pooled connection. ``claimed`` may be less than ``wanted``: the
    queues held fewer jobs due, or their limits left fewer slots."""

    queues: tuple[str, ...]
    wanted: int
    claimed: int
    seconds: float
    kind: ClaimKind
    worker_id: str


# fn(claim): a plain function, or one returning an awaitable (async def).
ClaimHook = Callable[[ClaimRound], Any]


@dataclasses.dataclass(slots=True)
class EnqueueCall:
    """One enqueue as an instrumentation sees it: the jobs about to be written (one, or a
    bulk batch), then, once written, their results in the same order. ``results`` stays
    None when the write failed (the exception goes through the context manager)."""

    specs: list[JobSpec]
    bulk: bool
    results: list[EnqueueResult] | None = None

    def set_trace_context(self, carrier: Mapping[str, str]) -> None:
        """Give every job of the call this W3C carrier (``traceparent``, and
        ``tracestate`` if any), checked once, unless a job has its own already.
        InvalidJobError for a carrier that is not a valid one."""
        text = OPTIONS_BY_NAME["trace_context"].check(dict(carrier))
        self.specs = [
            spec if spec.trace_context is not None else _with_trace_context(spec, text)
            for spec in self.specs
        ]


_TRACE_CONTEXT_INDEX = JobSpec._fields.index("trace_context")


def _with_trace_context(spec: JobSpec, text: str) -> JobSpec:
    # Rebuilt in its own class: a job build_job checked stays checked (and is not checked
    # again at the write) with a carrier checked here.
    values = list(spec)
    values[_TRACE_CONTEXT_INDEX] = text
    return type(spec)._make(values)


@dataclasses.dataclass(slots=True)
class JobRun:
    """One attempt a worker (or inline mode) runs, as an instrumentation sees it:
    ``outcome`` is set before the run's context manager exits, ``error`` with the
    exception for a failed, timed-out or cancelled attempt, ``retry_in`` with the seconds
    until the next attempt for a failed one that will be retried."""

    job: ClaimedJob
    outcome: RunOutcome | None = None
    error: BaseException | None = None
    retry_in: float | None = None


class Instrumentation(Protocol):
    """What ``queue.instrument()`` takes: two context managers (each method returns one,
    e.g. a generator function decorated with ``contextlib.contextmanager``)."""

    def enqueue(self, call: EnqueueCall) -> contextlib.AbstractContextManager[Any]:
        """Around one enqueue; may call ``call.set_trace_context`` before the write."""
        ...

    def run(self, run: JobRun) -> contextlib.AbstractContextManager[Any]:
        """Around one attempt; ``run.outcome`` is set when it exits."""
        ...


class Hooks:
    """A Queue's failure hooks and instrumentations (``queue.hooks``)."""

    def __init__(self) -> None:
        self.failure_hooks: list[FailureHook] = []
        self.claim_hooks: list[ClaimHook] = []
        self.instrumentations: list[Instrumentation] = []
        # Async failure hooks still running (kept referenced until they end).
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- instrumentations ---------------------------------------------------------------

    def enqueue(
        self, specs: list[JobSpec], *, bulk: bool
    ) -> contextlib.AbstractContextManager[EnqueueCall]:
        """The context of one enqueue: yields the call whose ``specs`` to write, and
        whose ``results`` the caller sets once written."""
        call = EnqueueCall(specs, bulk)
        if not self.instrumentations:
            return contextlib.nullcontext(call)
        return self._instrumented(call, [i.enqueue for i in self.instrumentations])

    def run(self, job: ClaimedJob) -> contextlib.AbstractContextManager[JobRun]:
        """The context of one attempt: yields the JobRun whose outcome to set."""
        run = JobRun(job)
        if not self.instrumentations:
            return contextlib.nullcontext(run)
        return self._instrumented(run, [i.run for i in self.instrumentations])

    @contextlib.contextmanager
    def _instrumented(self, value: Any, enters: list[Callable[[Any], Any]]) -> Iterator[Any]:
        with contextlib.ExitStack() as stack:
            for enter in enters:
                try:
                    stack.enter_context(_Guarded(enter(value)))
                except Exception:
                    _log.exception("hook_failed", hook=_name(enter), stage="enter")
            yield value

    # --- failure and claim hooks --------------------------------------------------------

    def failed(self, job: FailedJob, exc: BaseException) -> None:
        """Call every failure hook with ``job`` and ``exc``: sync ones now, async ones as
        tasks of the running loop (or, without one, to their end on a loop of their own)."""
        self._call(self.failure_hooks, (job, exc), "failure", job_id=job.id)

    def claimed(self, claim: ClaimRound) -> None:
        """Call every claim hook with ``claim``, as :meth:`failed` calls failure hooks."""
        self._call(self.claim_hooks, (claim,), "claim")

    def _call(
        self, hooks: list[Callable[..., Any]], args: tuple[Any, ...], stage: str, **context: Any
    ) -> None:
        for hook in hooks:
            try:
                outcome = hook(*args)
                if inspect.isawaitable(outcome):
                    self._start(hook, outcome, stage)
            except Exception:
                _log.exception("hook_failed", hook=_name(hook), stage=stage, **context)

    def _start(self, hook: Any, awaitable: Any, stage: str) -> None:
        async def guarded() -> None:
            try:
                await awaitable
            except Exception:
                _log.exception("hook_failed", hook=_name(hook), stage=stage)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _run_to_end(guarded())
            return
        task = loop.create_task(guarded(), name=f"pgqueue-hook-{_name(hook)}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_async_hooks(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the async failure and claim hooks still
        running."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class _Guarded(contextlib.AbstractContextManager[Any]):
    """An instrumentation's context manager whose own errors are logged, never raised,
    and which never swallows the call's exception."""

    def __init__(self, inner: contextlib.AbstractContextManager[Any]) -> None:
        self._inner = inner
        self._inner.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        try:
            self._inner.__exit__(exc_type, exc, traceback)
        except Exception as raised:
            if raised is not exc:
                _log.exception("hook_failed", hook=_name(self._inner), stage="exit")
        return False


def _run_to_end(coroutine: Coroutine[Any, Any, None]) -> None:
    """An async hook called where no loop runs in this thread (inline mode's sync face):
    run on a loop of its own, in a thread of its own when this thread's loop is busy."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    thread = threading.Thread(target=asyncio.run, args=(coroutine,), name="pgqueue-hook")
    thread.start()
    thread.join()


def _name(obj: Any) -> str:
    return str(getattr(obj, "__qualname__", None) or type(obj).__qualname__)
