"""Inline mode: a Queue that runs each job in-process, at once, when it is enqueued, and
keeps its jobs in memory. For unit tests of code that enqueues, without a database or
a worker::

    queue = Queue(inline=True)          # or: with pgqueue.testing.inline(app_queue): ...
    result = await send_email.enqueue(to="a@example.com")
    assert await queue.result(result.id) == "sent"

What stays the same as with a database:

- building and checking the job: the same arguments against the task's signature, the
  same JSON checks and option checks, the same :class:`~pgqueue.InvalidJobError`;
- the task receives its arguments as a worker would, decoded from the job's JSON (a
  tuple arrives as a list), inside ``current_job()`` (``set_progress`` is recorded;
  durable steps, ``step`` and ``step_sync``, are kept with the job, in memory, and
  replayed to its later attempts; ``Queue.job_steps`` reads them);
- its return value must be JSON (else the job fails for good, as in a worker);
- a failed attempt is recorded in ``job.errors`` (type, message, traceback, attempt,
  at) and retried up to ``max_attempts``; ``PermanentError`` fails it at once; an
  unknown task or arguments that do not fit fail it at once, as in a worker;
- ``enqueue`` returns an :class:`~pgqueue.EnqueueResult`; an idempotency key held by a
  queued, running or succeeded job returns that job (``duplicate=True``), one given up
  by a failed job does not; ``unique_for`` windows hold their key for their duration;
  ``enqueue_many`` folds repeated keys of one batch onto the first;
- ``get_job``, ``wait``, ``result`` (and their ``_sync`` twins) read the job back:
  ``result`` returns the value or raises :class:`~pgqueue.JobFailedError` (chained to
  the exception the last attempt raised).

What differs, on purpose:

- the job runs inside the ``enqueue`` call, which returns once it has finished
  (succeeded, or failed with every attempt spent); retries follow at once, without
  the backoff's sleep; ``run_at`` and ``delay`` do not postpone it;
- async tasks run on the caller's event loop (from ``enqueue_sync``, on a loop of
  their own); plain functions in a thread from ``enqueue`` and in the calling thread
  from ``enqueue_sync``; ``process=True`` tasks run in a thread too;
- ``timeout`` is not enforced; concurrency and rate limits, queues' pauses, sequence
  keys and debouncing have no effect (each job has ended before the next enqueue);
- a job enqueued by a running job runs at once, nested, before its parent finishes;
- ``Snooze`` leaves the job queued (``run_at`` pushed back) and nothing runs it later:
  waiting for it raises :class:`InlineModeError`;
- ``conn=`` is accepted and ignored: the job runs at once, not inside that
  transaction, so a rollback of the caller's transaction does not undo it;
- transactional tasks need a database connection: enqueueing one raises
  :class:`InlineModeError`, as does every call that needs the database (a worker,
  cancel, retry, schedules, limits, stats, the admin calls).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import itertools
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue.context import RunningJob, enter_job
from pgqueue.errors import (
    InlineModeError,
    JobFailedError,
    JobNotFoundError,
    PermanentError,
    Snooze,
)
from pgqueue.hooks import FailedJob, JobRun
from pgqueue.jobs import ClaimedJob, EnqueueResult
from pgqueue.rows import new_job
from pgqueue.states import KEY_HOLDING_STATES, TERMINAL_STATES, JobState
from pgqueue.steps import JobStep
from pgqueue.worker.lifecycle import error_entry
from pgqueue.worker.outcome import encode_result
from pgqueue.workflows import EnqueuedWorkflow, ParentNotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from pgqueue.hooks import Hooks
    from pgqueue.jobs import Job, JobSpec
    from pgqueue.tasks import Task
    from pgqueue.workflows import WorkflowPlan

__all__ = ["InlineJobs"]

_PARENT_FAILED_STATES = frozenset({JobState.FAILED, JobState.CANCELLED})

_log = structlog.get_logger("pgqueue.inline")


def needs_database(call: str) -> InlineModeError:
    return InlineModeError(
        f"{call} needs the database, and this Queue is in inline mode (jobs in memory, "
        "run at enqueue): test this against a real database instead (the pytest "
        "plugin's pgqueue_queue fixture)"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Attempt:
    """One attempt about to run: the task (None when unknown), the job, its context."""

    task: Task[Any, Any] | None
    job: Job
    context: contextvars.Context


class InlineJobs:
    """The jobs of a Queue in inline mode, in memory: what ``get_job``, ``wait`` and
    ``result`` read. :attr:`jobs` lists them all in enqueue order. Safe to use from
    several threads (a plain task runs in one and may enqueue)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        # The exception each failed job's last attempt raised (the cause of the
        # JobFailedError that Queue.result raises for it).
        self._raised: dict[int, BaseException] = {}
        self._keys: dict[str, int] = {}  # idempotency key -> the last job given it
        self._windows: dict[str, tuple[int, float]] = {}  # unique key -> (job, expiry)
        self._snoozed_ids: set[int] = set()  # queued, and left for nothing to run
        self._workflow_ids = itertools.count(1)
        self._steps: dict[int, dict[str, JobStep]] = {}  # job -> its finished steps

    # --- reading ---------------------------------------------------------------------

    @property
    def jobs(self) -> list[Job]:
        """Every job enqueued, in enqueue order, as it stands now."""
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def of_task(self, task: str | Task[Any, Any]) -> list[Job]:
        """The jobs of one task (given by name or as the task), in enqueue order."""
        name = task if isinstance(task, str) else task.name
        return [job for job in self.jobs if job.task == name]

    def steps_of(self, job_id: int) -> list[JobStep]:
        """The steps the job has finished, in the order they finished."""
        with self._lock:
            return list(self._steps.get(job_id, {}).values())

    def raised(self, job_id: int) -> BaseException | None:
        """The exception the job's last failed attempt raised, or None."""
        with self._lock:
            return self._raised.get(job_id)

    def clear(self) -> None:
        """Forget every job (ids go on counting)."""
        with self._lock:
            self._jobs.clear()
            self._raised.clear()
            self._keys.clear()
            self._windows.clear()
            self._snoozed_ids.clear()
            self._steps.clear()

    def finished(self, job_id: int) -> Job:
        """What ``Queue.wait`` returns: the job once finished, which in inline mode it
        is by the time its enqueue returns; JobNotFoundError for an unknown id, and
        InlineModeError for a job that nothing will run (snoozed, or still running:
        a job waiting for itself or for its parent)."""
        job = self.get(job_id)
        if job is None:
            raise JobNotFoundError(f"there is no job {job_id}")
        if job.state not in TERMINAL_STATES:
            raise InlineModeError(
                f"job {job_id} is {job.state.value} and, in inline mode, will not finish "
                "while this waits (a snoozed job stays queued; a running one is the caller's "
                "own or its parent)"
            )
        return job

    def result_of(self, job: Job) -> Any:
        """``job``'s return value; JobFailedError, chained to what its last attempt
        raised, if it failed or was cancelled."""
        if job.state is JobState.SUCCEEDED:
            return job.result
        raise JobFailedError(job) from self.raised(job.id)

    # --- enqueueing ------------------------------------------------------------------

    async def enqueue(
        self, tasks: Mapping[str, Task[Any, Any]], spec: JobSpec, *, hooks: Hooks | None = None
    ) -> EnqueueResult:
        """Write the (checked) job and run it to its end; what an enqueue returns. Each
        attempt runs inside the ``hooks``' instrumentations, and a failed one calls their
        failure hooks, as in a worker (pgqueue.hooks)."""
        return (await self.enqueue_many(tasks, [spec], hooks=hooks))[0]

    def enqueue_sync(
        self, tasks: Mapping[str, Task[Any, Any]], spec: JobSpec, *, hooks: Hooks | None = None
    ) -> EnqueueResult:
        return self.enqueue_many_sync(tasks, [spec], hooks=hooks)[0]

    async def enqueue_many(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        specs: Sequence[JobSpec],
        *,
        hooks: Hooks | None = None,
    ) -> list[EnqueueResult]:
        """Write every (checked) job of the batch, then run the new ones in order."""
        results = self._add_all(tasks, specs)
        for result in results:
            if not result.duplicate:
                await self._run(tasks, result.id, hooks)
        return results

    def enqueue_many_sync(
        self,
        tasks: Mapping[str, Task[Any, Any]],
        specs: Sequence[JobSpec],
        *,
        hooks: Hooks | None = None,
    ) -> list[EnqueueResult]:
        results = self._add_all(tasks, specs)
        for result in results:
            if not result.duplicate:
                self._run_sync(tasks, result.id, hooks)
        return results

    def _add_all(
        self, tasks: Mapping[str, Task[Any, Any]], specs: Sequence[JobSpec]
    ) -> list[EnqueueResult]:
        for spec in specs:
            task = tasks.get(spec.task)
            if task is not None and task.transactional:
                raise InlineModeError(
                    f"task {spec.task} is transactional: its function takes a database "
                    "connection, which a Queue in inline mode does not have; test it "
                    "against a real database (the pytest plugin's pgqueue_queue fixture)"
                )
        with self._lock:
            # As the bulk enqueue does: a key repeated in one batch is the first row's job.
            in_batch: dict[str, EnqueueResult] = {}
            results: list[EnqueueResult] = []
            for spec in specs:
                key = spec.idempotency_key
                if key is not None and key in in_batch:
                    results.append(EnqueueResult(in_batch[key].id, duplicate=True))
                    continue
                result = self._add(spec)
                if key is not None:
                    in_batch[key] = result
                results.append(result)
            return results

    def _add(self, spec: JobSpec, parents: Sequence[int] = ()) -> EnqueueResult:
        holder = self._holder(spec)
        if holder is not None:
            return EnqueueResult(holder, duplicate=True)
        now = datetime.now(UTC)
        all_parents = (*parents, *(spec.depends_on or ()))
        missing = tuple(p for p in spec.depends_on or () if p not in self._jobs)
        if missing:
            raise ParentNotFoundError(missing)
        job_id = next(self._ids)
        # As an enqueue writes it (pgqueue.rows follows the job's definition).
        row = {
            "id": job_id,
            "created_at": now,
            "run_at": spec.run_at or now + timedelta(seconds=spec.delay),
            "state": JobState.BLOCKED.value if all_parents else JobState.QUEUED.value,
        }
        job = new_job(spec, row)
        if all_parents:
            job = self._settle(job, all_parents, now)
        self._jobs[job_id] = job
        if spec.idempotency_key is not None:
            self._keys[spec.idempotency_key] = job_id
        if spec.unique_key is not None and spec.unique_for is not None:
            self._windows[spec.unique_key] = (job_id, time.monotonic() + spec.unique_for)
        return EnqueueResult(job_id, duplicate=False)

    def _settle(self, job: Job, parents: Sequence[int], now: datetime) -> Job:
        """A dependant as the database would leave it: its parents (which in inline
        mode have run already) counted off, then queued with their results, cancelled
        with a failed one, or blocked behind one that is not finished (snoozed)."""
        on_failure = job.on_parent_failure or "cancel"
        job = dataclasses.replace(job, depends_on=tuple(parents), on_parent_failure=on_failure)
        ended = [self._jobs[p] for p in parents]
        failed = next((p for p in ended if p.state in _PARENT_FAILED_STATES), None)
        if failed is not None and on_failure == "cancel":
            entry = {
                "attempt": 0,
                "type": "pgqueue.ParentFailed",
                "message": f"parent job {failed.id} ended {failed.state.value}",
                "traceback": None,
                "parent_id": failed.id,
                "parent_state": failed.state.value,
                "at": now.isoformat(),
            }
            return dataclasses.replace(
                job, state=JobState.CANCELLED, errors=[entry], finished_at=now
            )
        if any(p.state not in TERMINAL_STATES for p in ended):
            return job  # blocked behind a snoozed job, which nothing runs in inline mode
        args = job.args
        if job.parent_results_arg is not None:
            results = [p.result if p.state is JobState.SUCCEEDED else None for p in ended]
            args = {**args, job.parent_results_arg: results[0] if len(ended) == 1 else results}
        return dataclasses.replace(job, state=JobState.QUEUED, args=args)

    # --- workflows (pgqueue.workflows) ---------------------------------------------------

    async def enqueue_workflow(
        self, tasks: Mapping[str, Task[Any, Any]], plan: WorkflowPlan
    ) -> EnqueuedWorkflow:
        """Write the workflow's jobs in their order (parents first), running each as it
        is written; what enqueue_workflow returns."""
        self._check_workflow(tasks, plan)
        ids: list[int] = []
        for spec, parents in zip(plan.specs, plan.parents, strict=True):
            ids.append(self._add_checked(spec, [ids[p] for p in parents]))
            await self._run(tasks, ids[-1])
        return self._enqueued(plan, ids)

    def enqueue_workflow_sync(
        self, tasks: Mapping[str, Task[Any, Any]], plan: WorkflowPlan
    ) -> EnqueuedWorkflow:
        self._check_workflow(tasks, plan)
        ids: list[int] = []
        for spec, parents in zip(plan.specs, plan.parents, strict=True):
            ids.append(self._add_checked(spec, [ids[p] for p in parents]))
            self._run_sync(tasks, ids[-1])
        return self._enqueued(plan, ids)

    def _add_checked(self, spec: JobSpec, parents: Sequence[int]) -> int:
        with self._lock:
            return self._add(spec, parents).id

    def _check_workflow(self, tasks: Mapping[str, Task[Any, Any]], plan: WorkflowPlan) -> None:
        """What would refuse the workflow, before any of its jobs is written."""
        for spec in plan.specs:
            task = tasks.get(spec.task)
            if task is not None and task.transactional:
                self._add_all(tasks, [spec])  # raises InlineModeError, as enqueue does
        with self._lock:
            missing = {p for s in plan.specs for p in s.depends_on or () if p not in self._jobs}
        if missing:
            raise ParentNotFoundError(tuple(sorted(missing)))

    def _enqueued(self, plan: WorkflowPlan, ids: list[int]) -> EnqueuedWorkflow:
        with self._lock:
            states = tuple(self._jobs[i].state for i in ids)
        return EnqueuedWorkflow(
            id=next(self._workflow_ids),
            job_ids=tuple(ids),
            last_ids=tuple(ids[i] for i in plan.exits),
            states=states,
        )

    def _holder(self, spec: JobSpec) -> int | None:
        """The job that holds ``spec``'s idempotency key or unique window, if any."""
        if spec.idempotency_key is not None:
            held = self._keys.get(spec.idempotency_key)
            job = None if held is None else self._jobs.get(held)
            if job is not None and job.state in KEY_HOLDING_STATES:
                return job.id
        if spec.unique_key is not None and spec.unique_for is not None:
            window = self._windows.get(spec.unique_key)
            if window is not None and window[1] > time.monotonic() and window[0] in self._jobs:
                return window[0]
        return None

    # --- running ---------------------------------------------------------------------

    async def _run(
        self, tasks: Mapping[str, Task[Any, Any]], job_id: int, hooks: Hooks | None = None
    ) -> None:
        while (attempt := self._start(tasks, job_id)) is not None:
            scope = _RunScope(hooks, attempt)
            try:
                value = await _call_async(attempt)
                self._succeeded(attempt.job, encode_result(value))
                scope.run.outcome = "succeeded"
            except Snooze as snooze:
                self._snoozed(attempt.job, snooze.after)
                scope.run.outcome = "snoozed"
            except Exception as exc:
                self._failed(attempt, exc, scope)
            finally:
                scope.close()

    def _run_sync(
        self, tasks: Mapping[str, Task[Any, Any]], job_id: int, hooks: Hooks | None = None
    ) -> None:
        while (attempt := self._start(tasks, job_id)) is not None:
            scope = _RunScope(hooks, attempt)
            try:
                value = _call_sync(attempt)
                self._succeeded(attempt.job, encode_result(value))
                scope.run.outcome = "succeeded"
            except Snooze as snooze:
                self._snoozed(attempt.job, snooze.after)
                scope.run.outcome = "snoozed"
            except Exception as exc:
                self._failed(attempt, exc, scope)
            finally:
                scope.close()

    def _start(self, tasks: Mapping[str, Task[Any, Any]], job_id: int) -> _Attempt | None:
        """The job's next attempt, marked running; None once it is no longer queued."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state is not JobState.QUEUED or job_id in self._snoozed_ids:
                return None  # forgotten (clear), finished, or snoozed
            job = self._update(
                job,
                state=JobState.RUNNING,
                attempts=job.attempts + 1,
                started_at=datetime.now(UTC),
            )
        context = contextvars.copy_context()
        running = RunningJob(
            job.id,
            job.queue,
            job.task,
            job.attempts,
            job.max_attempts,
            _progress=_Progress(self),
        )
        context.run(enter_job, running)
        return _Attempt(tasks.get(job.task), job, context)

    def _update(self, job: Job, **changes: Any) -> Job:
        with self._lock:
            if job.id not in self._jobs:  # forgotten meanwhile (clear)
                return job
            new = dataclasses.replace(self._jobs[job.id], **changes)
            self._jobs[job.id] = new
            return new

    def _succeeded(self, job: Job, result_json: str | None) -> None:
        self._update(
            job,
            state=JobState.SUCCEEDED,
            result=None if result_json is None else json.loads(result_json),
            finished_at=datetime.now(UTC),
        )
        _log.debug("job_succeeded", job_id=job.id, task=job.task, attempt=job.attempts)

    def _snoozed(self, job: Job, after: float) -> None:
        # Back to queued without counting the attempt, as in a worker; nothing runs it.
        with self._lock:
            self._snoozed_ids.add(job.id)
            self._update(
                job,
                state=JobState.QUEUED,
                attempts=job.attempts - 1,
                started_at=None,
                run_at=datetime.now(UTC) + timedelta(seconds=after),
            )
        _log.info("job_snoozed", job_id=job.id, task=job.task, after=after)

    def _failed(self, attempt: _Attempt, exc: Exception, scope: _RunScope) -> None:
        job = attempt.job
        entry = json.loads(error_entry(job.attempts, exc))
        entry["at"] = datetime.now(UTC).isoformat()
        again = not isinstance(exc, PermanentError) and job.attempts < job.max_attempts
        with self._lock:
            self._raised[job.id] = exc
            current = self._jobs.get(job.id, job)
            self._update(
                job,
                state=JobState.QUEUED if again else JobState.FAILED,
                errors=[*current.errors, entry],
                finished_at=None if again else datetime.now(UTC),
            )
        message = f"{type(exc).__name__}: {exc}"
        if again:
            _log.info("job_retry_now", job_id=job.id, task=job.task, error=message)
        else:
            _log.info("job_failed", job_id=job.id, task=job.task, error=message)
        retry_in = 0.0 if again else None  # inline mode retries at once
        scope.run.outcome = "retrying" if again else "failed"
        scope.run.error, scope.run.retry_in = exc, retry_in
        if scope.hooks is not None and scope.hooks.failure_hooks:
            scope.hooks.failed(FailedJob.of(scope.run.job, retry_in), exc)


class _RunScope:
    """The instrumentations' context around one inline attempt (pgqueue.hooks), entered
    and left in the attempt's own context, so that what they make current is what the
    task sees."""

    def __init__(self, hooks: Hooks | None, attempt: _Attempt) -> None:
        self.hooks = hooks
        job = attempt.job
        claimed = ClaimedJob(
            job.id,
            job.queue,
            job.task,
            job.args,
            job.priority,
            job.attempts,
            job.max_attempts,
            job.timeout,
            job.trace_context,
        )
        self._context = attempt.context
        self._scope: Any = None
        self.run: JobRun
        if hooks is None:
            self.run = JobRun(claimed)
        else:
            self._scope = hooks.run(claimed)
            self.run = self._context.run(self._scope.__enter__)

    def close(self) -> None:
        if self._scope is not None:
            self._context.run(self._scope.__exit__, None, None, None)


class _Progress:
    """Where ``current_job().set_progress(...)`` goes in inline mode: the job's
    ``progress``, in memory; and where its steps are kept."""

    def __init__(self, store: InlineJobs) -> None:
        self._store = store
        self.steps = _Steps(store)

    async def report(self, job: RunningJob, progress_json: str) -> None:
        self.report_sync(job, progress_json)

    def report_sync(self, job: RunningJob, progress_json: str) -> None:
        stored = self._store.get(job.id)
        if stored is not None and stored.state is JobState.RUNNING:
            self._store._update(stored, progress=json.loads(progress_json))  # noqa: SLF001


class _Steps:
    """A job's durable steps in inline mode (:mod:`pgqueue.steps`), in memory with the
    job: recorded while the attempt is the job's running one, replayed to later ones."""

    def __init__(self, store: InlineJobs) -> None:
        self._store = store

    async def load(self, job_id: int) -> dict[str, str]:
        return self.load_sync(job_id)

    async def save(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        return self.save_sync(job_id, attempt, name, result_json)

    def load_sync(self, job_id: int) -> dict[str, str]:
        steps = self._store._steps  # noqa: SLF001 - this store's own part of InlineJobs
        with self._store._lock:  # noqa: SLF001
            return {name: _as_json(step.result) for name, step in steps.get(job_id, {}).items()}

    def save_sync(self, job_id: int, attempt: int, name: str, result_json: str) -> str:
        store = self._store
        with store._lock:  # noqa: SLF001
            job = store.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.attempts != attempt:
                raise InlineModeError(
                    f"step {name!r} of job {job_id} finished, but its attempt is no longer "
                    "running (the jobs were cleared meanwhile): nothing was recorded"
                )
            steps = store._steps.setdefault(job_id, {})  # noqa: SLF001
            if name not in steps:  # the first record of a name holds, as in the database
                steps[name] = JobStep(name, json.loads(result_json), attempt, datetime.now(UTC))
            return _as_json(steps[name].result)


def _as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _call(attempt: _Attempt) -> Callable[[], Any]:
    """The job's function bound to its arguments, or PermanentError for what a worker
    would refuse too (an unknown task, arguments that do not fit)."""
    task, job = attempt.task, attempt.job
    if task is None:
        raise PermanentError(
            f"unknown task {job.task!r}: no task of that name is registered with this Queue"
        )
    if not task.accepts(job.args):
        try:
            task.signature.bind(**job.args)
        except TypeError as exc:
            raise PermanentError(f"job arguments do not match task {job.task}: {exc}") from exc
    return functools.partial(task.fn, **job.args)


async def _call_async(attempt: _Attempt) -> Any:
    call = _call(attempt)
    assert attempt.task is not None  # noqa: S101 - _call refused an unknown task
    if attempt.task.is_async:
        # In the attempt's own context (its current_job), on the caller's loop.
        return await asyncio.get_running_loop().create_task(
            call(), context=attempt.context, name=f"pgqueue-inline-{attempt.job.id}"
        )
    # A plain function runs in a thread, as in a worker: never on the loop.
    return await asyncio.get_running_loop().run_in_executor(None, attempt.context.run, call)


def _call_sync(attempt: _Attempt) -> Any:
    call = _call(attempt)
    assert attempt.task is not None  # noqa: S101 - _call refused an unknown task
    if not attempt.task.is_async:
        return attempt.context.run(call)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: one of its own for the call
        return attempt.context.run(asyncio.run, call())
    # A sync enqueue from code running on a loop: the coroutine gets a loop of its own
    # in another thread (this thread's loop is blocked in this call).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pgqueue-inline") as pool:
        return pool.submit(attempt.context.run, asyncio.run, call()).result()
