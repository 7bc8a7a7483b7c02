"""Tasks: a registered function and the options its jobs are enqueued with."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pgqueue.errors import InvalidJobError
from pgqueue.jobs import (
    CheckedJobSpec,
    EnqueueResult,
    JobSpec,
    build_job,
    encode_json,
    validate_timeout,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from pgqueue.app import Queue
    from pgqueue.retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-job options; a field left at None falls back to the task's default."""

    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    idempotency_key: str | None = None
    timeout: float | None = None
    conn: Any = None

    def only_conn(self) -> bool:
        """True when no option but ``conn`` is set: jobs take the task's defaults."""
        chosen = (
            self.queue,
            self.priority,
            self.max_attempts,
            self.run_at,
            self.delay,
            self.idempotency_key,
            self.timeout,
        )
        return all(v is None for v in chosen)


def check_task_function(
    fn: Callable[..., Any], *, transactional: bool = False
) -> inspect.Signature:
    """Refuse functions whose arguments cannot travel as a JSON object of keywords; the
    signature of the job's arguments (a transactional task's connection left out)."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise TypeError(f"task {fn.__qualname__} is a generator; tasks must return a value")
    signature = inspect.signature(fn)
    if transactional:
        params = list(signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(
                f"transactional task {fn.__qualname__} must take the connection as its first "
                "positional parameter"
            )
        signature = signature.replace(parameters=params[1:])
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL):
            raise TypeError(
                f"task {fn.__qualname__}: parameter {param.name!r} is positional-only or *args; "
                "job arguments are stored as keywords, so every parameter needs a name"
            )
    return signature


@dataclass(frozen=True, slots=True)
class KeywordShape:
    """What a task accepts by keyword, for the common all-keywords call without the
    cost of ``Signature.bind``."""

    names: frozenset[str]
    required: frozenset[str]
    any_keyword: bool

    @classmethod
    def of(cls, signature: inspect.Signature) -> KeywordShape:
        params = signature.parameters.values()
        return cls(
            names=frozenset(p.name for p in params if p.kind != p.VAR_KEYWORD),
            required=frozenset(
                p.name for p in params if p.default is p.empty and p.kind != p.VAR_KEYWORD
            ),
            any_keyword=any(p.kind == p.VAR_KEYWORD for p in params),
        )

    def accepts(self, kwargs: dict[str, Any]) -> bool:
        keys = kwargs.keys()
        return self.required <= keys and (self.any_keyword or keys <= self.names)


def bind_arguments(
    signature: inspect.Signature,
    task_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    shape: KeywordShape | None = None,
) -> dict[str, Any]:
    """The call's arguments as the keyword dict the job stores, checked against the
    task's signature so a mismatch fails at enqueue, not in the worker."""
    if not args and shape is not None and shape.accepts(kwargs):
        return kwargs  # a **kwargs dict is made afresh for every call: ours to keep
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidJobError(f"arguments do not match task {task_name}: {exc}") from exc
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind == inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def _check_modes(
    fn: Callable[..., Any], is_async: bool, *, process: bool, transactional: bool
) -> None:
    if not process:
        return
    if is_async:
        raise TypeError(f"task {fn.__qualname__}: process=True is for plain functions, not async")
    if transactional:
        raise TypeError(
            f"task {fn.__qualname__}: a transactional task cannot run in a process (its "
            "connection cannot travel there)"
        )
    if "<locals>" in fn.__qualname__:
        raise TypeError(
            f"task {fn.__qualname__}: process=True needs a module-level function, which the "
            "pool's processes can import by name"
        )


class Task(Generic[P, R]):
    """A function registered with a Queue. Call it to run it here and now; enqueue it to
    have a worker run it."""

    def __init__(
        self,
        app: Queue,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str,
        priority: int,
        max_attempts: int,
        retry: RetryPolicy,
        timeout: float | None = None,
        process: bool = False,
        transactional: bool = False,
        options: EnqueueOptions | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        # Seconds one attempt may run (a job's own timeout beats it); None: no limit.
        self.timeout = None if timeout is None else validate_timeout(timeout, "timeout")
        # Run in the worker's process pool (plain functions only): see pgqueue.worker.execution.
        self.process = process
        # Called with a connection whose transaction also marks the job succeeded.
        self.transactional = transactional
        _check_modes(fn, self.is_async, process=process, transactional=transactional)
        self.signature = check_task_function(fn, transactional=transactional)
        self._shape = KeywordShape.of(self.signature)
        self._options = options or EnqueueOptions()
        # Build one job now so that a bad default (queue name, priority...) fails at
        # decoration time rather than at the first enqueue; after that, a job with only
        # the task's checked defaults needs nothing checked but its arguments.
        self._spec({})
        self._defaults_only = self._options.only_conn()

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R | Awaitable[R]:
        if self.transactional:
            raise TypeError(f"{self.name} is transactional: call {self.name}.fn(conn, ...)")
        return self.fn(*args, **kwargs)

    def with_options(
        self,
        *,
        queue: str | None = _UNSET,
        priority: int | None = _UNSET,
        max_attempts: int | None = _UNSET,
        run_at: datetime | None = _UNSET,
        delay: float | None = _UNSET,
        idempotency_key: str | None = _UNSET,
        timeout: float | None = _UNSET,
        conn: Any = _UNSET,
    ) -> Task[P, R]:
        """A copy of this task whose jobs get these options. ``conn`` is a connection,
        transaction or session of the caller's; the job is written in its transaction."""
        given = {
            "queue": queue,
            "priority": priority,
            "max_attempts": max_attempts,
            "run_at": run_at,
            "delay": delay,
            "idempotency_key": idempotency_key,
            "timeout": timeout,
            "conn": conn,
        }
        options = replace(self._options, **{k: v for k, v in given.items() if v is not _UNSET})
        clone = Task.__new__(Task)
        clone.__dict__.update(self.__dict__)
        clone._options = options  # noqa: SLF001 - a copy of our own class
        clone._defaults_only = options.only_conn()  # noqa: SLF001
        clone._spec({})  # noqa: SLF001 - bad options fail here, not at the first enqueue
        return clone

    def _spec(self, args: dict[str, Any]) -> JobSpec:
        o = self._options
        return build_job(
            self.name,
            args,
            queue=self.queue if o.queue is None else o.queue,
            priority=self.priority if o.priority is None else o.priority,
            max_attempts=self.max_attempts if o.max_attempts is None else o.max_attempts,
            run_at=o.run_at,
            delay=o.delay,
            idempotency_key=o.idempotency_key,
            timeout=o.timeout,
        )

    def accepts(self, args: dict[str, Any]) -> bool:
        """Whether a job's stored arguments fit this task's signature (cheap check; a
        False answer is worth a ``signature.bind`` for the exact reason)."""
        return self._shape.accepts(args)

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """A validated job for this call, for ``Queue.enqueue_many``."""
        arguments = bind_arguments(self.signature, self.name, args, kwargs, self._shape)
        if self._defaults_only:
            # Keyword names are strings by construction; only the values need checking.
            return CheckedJobSpec(
                task=self.name,
                args_json=encode_json(arguments, "args"),
                queue=self.queue,
                priority=self.priority,
                max_attempts=self.max_attempts,
            )
        return self._spec(arguments)

    async def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> EnqueueResult:
        return await self.app.enqueue_spec(self.job(*args, **kwargs), conn=self._options.conn)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> EnqueueResult:
        return self.app.enqueue_spec_sync(self.job(*args, **kwargs), conn=self._options.conn)
