"""Tasks: a registered function and the options its jobs are enqueued with."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack

from pgqueue.checks import encode_json, validate_timeout
from pgqueue.errors import InvalidJobError
from pgqueue.jobs import CheckedJobSpec, EnqueueResult, JobOptions, JobSpec
from pgqueue.validation import build_with_options, check_option_names, has_options
from pgqueue.workflows import check_results_arg

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pgqueue.app import Queue
    from pgqueue.retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")

_UNSET: Any = object()


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


def _without_results_arg(
    signature: inspect.Signature, name: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The call's keywords with a stand-in for the argument a job's parents' results
    fill in (so that binding does not miss it); the caller may not give it."""
    if name in kwargs:
        raise InvalidJobError(
            f"argument {name!r} is given by the parents' results (parent_results_arg), not by "
            "the call",
            field="parent_results_arg",
        )
    if name in signature.parameters:
        return {**kwargs, name: None}
    return kwargs


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
        self._options: JobOptions = {}
        self._conn: Any = None  # with_options(conn=...): jobs go in its transaction
        # Build one job now so that a bad default (queue name, priority...) fails at
        # decoration time rather than at the first enqueue; after that, a job with only
        # the task's checked defaults needs nothing checked but its arguments.
        self._spec({})
        self._defaults_only = True

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R | Awaitable[R]:
        if self.transactional:
            raise TypeError(f"{self.name} is transactional: call {self.name}.fn(conn, ...)")
        return self.fn(*args, **kwargs)

    def with_options(self, *, conn: Any = _UNSET, **options: Unpack[JobOptions]) -> Task[P, R]:
        """A copy of this task whose jobs get these options (see :class:`JobOptions`;
        None puts one back to the task's default). ``conn`` is a connection, transaction
        or session of the caller's; the job is written in its transaction. A bad option
        fails here, not at the first enqueue."""
        check_option_names(options)
        clone = Task.__new__(Task)
        clone.__dict__.update(self.__dict__)
        # Copies of our own class's state:
        clone._options = {**self._options, **options}  # noqa: SLF001
        clone._defaults_only = not has_options(clone._options)  # noqa: SLF001
        if conn is not _UNSET:
            clone._conn = conn  # noqa: SLF001
        clone._spec({})  # noqa: SLF001
        results_arg = clone._options.get("parent_results_arg")  # noqa: SLF001
        if results_arg is not None:
            # The argument the parents' results fill in must be one the function takes.
            check_results_arg(clone, results_arg)
        return clone

    @property
    def defaults(self) -> JobOptions:
        """The options this task's jobs get when the enqueue gives none."""
        return {"queue": self.queue, "priority": self.priority, "max_attempts": self.max_attempts}

    def _spec(self, args: dict[str, Any]) -> JobSpec:
        return build_with_options(self.name, args, self._options, task_defaults=self.defaults)

    def accepts(self, args: dict[str, Any]) -> bool:
        """Whether a job's stored arguments fit this task's signature (cheap check; a
        False answer is worth a ``signature.bind`` for the exact reason)."""
        return self._shape.accepts(args)

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """A validated job for this call, for ``Queue.enqueue_many``."""
        results_arg = self._options.get("parent_results_arg")
        if results_arg is not None:
            # Filled in by the parents' results when the job is released, not by the call.
            call_kwargs = _without_results_arg(self.signature, results_arg, kwargs)
        else:
            call_kwargs = kwargs
        arguments = bind_arguments(self.signature, self.name, args, call_kwargs, self._shape)
        if results_arg is not None:
            arguments.pop(results_arg, None)
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
        return await self.app.enqueue_spec(self.job(*args, **kwargs), conn=self._conn)

    def enqueue_sync(self, *args: P.args, **kwargs: P.kwargs) -> EnqueueResult:
        return self.app.enqueue_spec_sync(self.job(*args, **kwargs), conn=self._conn)
