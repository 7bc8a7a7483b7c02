"""The Queue: the registry of tasks and the entry point for enqueueing and inspection.

Its parts: :mod:`pgqueue.queue_core` (configuration, connections, building jobs),
:mod:`pgqueue.queue_calls` (the async calls) and the generated
:mod:`pgqueue.queue_calls_sync` (their ``_sync`` twins)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

import structlog

from pgqueue.checks import validate_task_name
from pgqueue.errors import InvalidJobError, UnknownTaskError
from pgqueue.flow import FlowDeclarations
from pgqueue.job_options import DEFAULT_MAX_ATTEMPTS
from pgqueue.jobs import JobOptions
from pgqueue.queue_calls import QueueCalls
from pgqueue.queue_calls_sync import QueueCallsSync
from pgqueue.retry import RetryPolicy
from pgqueue.scheduling.specs import ScheduleSpec, build_schedule
from pgqueue.tasks import Task, bind_arguments

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import timedelta

    from pgqueue.hooks import ClaimHook, FailureHook, Instrumentation

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["JobOptions", "Queue", "importable_module_name"]


class PeriodicDecorator(Protocol):
    """What ``@queue.periodic(...)`` applies to: a task, or a function it registers as
    one with the default options."""

    @overload
    def __call__(self, target: Task[P, R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, target: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, target: Callable[P, R], /) -> Task[P, R]: ...


class Queue(FlowDeclarations, QueueCalls, QueueCallsSync):
    """A pgqueue application: its tasks, and the database that holds their jobs.

    ``dsn`` names the database; without one, ``PGQUEUE_DSN`` is used, and without that an
    embedded PostgreSQL is started (or reused) in ``data_dir`` on first use.
    Connections are opened lazily: an asyncpg pool for the async calls and a psycopg
    pool for the ``*_sync`` calls. Close them with ``close()`` / ``close_sync()``.

    Calls on these connections (not on a ``conn=`` of yours) ride out a database
    restart: a connection found dead, or one that cannot be made yet, is retried with
    backoff for up to ``pool_timeout`` seconds, as is a statement the server rolled back
    (deadlock, serialization failure, lock or statement timeout). A connection lost
    mid-statement raises ``OutcomeUnknownError``, except for idempotent calls (reads,
    jobs with idempotency keys), which are retried. ``pool_timeout`` also bounds the
    wait for a free connection when all ``pool_size`` are busy (``PoolTimeoutError``).
    Each connection attempt gives up after the connect timeout (5 s, see
    :mod:`pgqueue.connect`), and each failed try is logged (``queue_call_retrying``).

    ``pooler=True``: the DSN leads to a transaction pooler (PgBouncer's ``pool_mode =
    transaction``): no prepared statements on it, and LISTEN (wake-ups, waits for
    results) on ``listen_dsn``, a direct DSN to the same database, or, without one,
    polling; the same as ``PGQUEUE_POOLER=1`` and ``PGQUEUE_LISTEN_DSN`` for this DSN.
    """

    @overload
    def task(self, fn: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        max_attempts: int = ...,
        retry: RetryPolicy | None = ...,
        timeout: float | None = ...,
        transactional: Literal[True],
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = ...,
        queue: str | None = ...,
        priority: int = ...,
        max_attempts: int = ...,
        retry: RetryPolicy | None = ...,
        timeout: float | None = ...,
        process: bool = ...,
        transactional: Literal[False] = ...,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        process: bool = False,
        transactional: bool = False,
    ) -> Any:
        """Register a function as a task (``@queue.task`` or ``@queue.task(...)``).

        Async functions run on the worker's event loop; plain functions run in its
        thread pool, never on the loop, or with ``process=True`` in its process pool.
        ``timeout`` bounds one attempt, in seconds. A ``transactional`` task takes a
        connection first (asyncpg for async, psycopg for plain functions) whose
        transaction also marks the job succeeded. ``name`` defaults to
        ``module.qualname``, where module is the name a worker imports the function's
        module by: for a script run as ``python app.py`` that is ``app``, not
        ``__main__`` (see :func:`importable_module_name`).
        """

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{importable_module_name(func)}.{func.__qualname__}"
            try:
                validate_task_name(task_name)
            except InvalidJobError as exc:
                raise InvalidJobError(f"{exc}; pass name= to @task") from exc
            if task_name in self.tasks:
                raise ValueError(f"a task named {task_name!r} is already registered")
            task: Task[Any, Any] = Task(
                self,
                func,
                name=task_name,
                queue=queue or self.default_queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry or RetryPolicy(),
                timeout=timeout,
                process=process,
                transactional=transactional,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    @functools.cached_property
    def periodic_schedules(self) -> dict[str, ScheduleSpec]:
        """The schedules declared with :meth:`periodic`, by name. Every worker that runs
        the scheduler writes them to ``pgqueue.schedules`` as it starts."""
        return {}

    def periodic(
        self,
        cron: str | None = None,
        /,
        *,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        args: dict[str, Any] | None = None,
        catch_up: bool = False,
        queue: str | None = None,
        priority: int | None = None,
    ) -> PeriodicDecorator:
        """Run a task periodically: at the instants of a ``cron`` expression read in
        ``timezone`` (``@queue.periodic("0 3 * * *", timezone="Europe/Paris")``), or
        ``every`` so many seconds (or a timedelta; at least 1 s), counted from the Unix
        epoch so that every worker agrees on the ticks. Put it above ``@queue.task``
        (or straight on a function, which is then registered with the defaults).

        Each tick enqueues one job of the task with ``args`` (checked against its
        signature now), in the task's queue and priority unless given, however many
        workers run. ``catch_up``: a tick missed while no worker ran the scheduler (see
        :mod:`pgqueue.scheduling.ticks`) gets one job for all such ticks, instead of
        none. The schedule is called ``name`` (default: the task's name) and stored in
        ``pgqueue.schedules`` by every worker that starts with its scheduler on; a pause
        set at runtime is kept, other changes are overwritten by the code's.
        """

        def declare(target: Any) -> Any:
            task = target if isinstance(target, Task) else self.task(target)
            arguments = bind_arguments(task.signature, task.name, (), dict(args or {}))
            spec = build_schedule(
                name or task.name,
                task.name,
                cron=cron,
                every=every,
                timezone=timezone,
                args=arguments,
                queue=task.queue if queue is None else queue,
                priority=task.priority if priority is None else priority,
                max_attempts=task.max_attempts,
                catch_up=catch_up,
            )
            if spec.name in self.periodic_schedules:
                raise ValueError(
                    f"a schedule named {spec.name!r} is already declared; pass name= to "
                    "@periodic to give this one another"
                )
            self.periodic_schedules[spec.name] = spec
            return task

        decorator: PeriodicDecorator = declare
        return decorator

    def on_failure(self, hook: FailureHook) -> FailureHook:
        """Register ``hook(job, exc)``, called on every failed attempt of this Queue's
        jobs: one to be retried, the last one, a timeout (a :class:`~pgqueue.hooks.
        FailedJob` and the exception). Sync or ``async def``; usable as a decorator. A
        hook that raises is logged (``hook_failed``) and changes nothing else. Workers
        started on this Queue (``pgqueue worker app:queue``) and inline mode call it.
        See :mod:`pgqueue.hooks`."""
        self.hooks.failure_hooks.append(hook)
        return hook

    def on_claim(self, hook: ClaimHook) -> ClaimHook:
        """Register ``hook(claim)``, called by workers on this Queue after each claim they
        make, with a :class:`~pgqueue.hooks.ClaimRound` (queues, jobs wanted and claimed,
        the round trip's seconds): for claim latency metrics. Sync (keep it quick: it runs
        on the claim loop) or ``async def``; usable as a decorator. A hook that raises is
        logged (``hook_failed``) and changes nothing else. See :mod:`pgqueue.hooks`."""
        self.hooks.claim_hooks.append(hook)
        return hook

    def instrument(self, instrumentation: Instrumentation) -> None:
        """Add an instrumentation: context managers around each enqueue and each attempt
        run (see :class:`~pgqueue.hooks.Instrumentation`;
        ``pgqueue.contrib.opentelemetry.instrument`` adds one)."""
        self.hooks.instrumentations.append(instrumentation)

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(f"no task named {name!r} is registered") from None

    def queues(self) -> list[str]:
        """The queues this app's tasks use, in a stable order."""
        return sorted({t.queue for t in self.tasks.values()} or {self.default_queue})


def importable_module_name(func: Callable[..., Any]) -> str:
    """The name under which a worker imports ``func``'s module. A function defined in a
    script run as ``python app.py`` has ``__module__ == "__main__"``, while the worker,
    importing ``app:queue``, knows it as ``app``: such a task is named after the module
    the script would be imported as (``python -m pkg.app`` -> ``pkg.app``; ``python
    pkg/app.py`` with ``pkg/__init__.py`` -> ``pkg.app``), so that both sides agree."""
    module = str(func.__module__)
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and not spec.name.endswith("__main__"):
        return str(spec.name)
    path = getattr(main, "__file__", None)
    if not path:  # a REPL or notebook: nothing a worker could import
        structlog.get_logger("pgqueue").warning(
            "task_not_importable",
            task=func.__qualname__,
            hint="defined in an interactive session: a worker cannot import it; define it "
            "in a module, or pass name= and register the same name in the worker's app",
        )
        return module
    file = Path(path).resolve()
    parts = [file.stem]
    parent = file.parent
    while (parent / "__init__.py").exists():  # inside a package: its dotted name
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts)
