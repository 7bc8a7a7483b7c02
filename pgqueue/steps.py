"""Durable steps inside a job: ``await current_job().step("charge", charge_card, order_id)``.

A step is a call a job makes once, whatever the number of its attempts. The first
attempt that finishes the step stores its JSON result with the job (the
``pgqueue.job_steps`` table); a later attempt of the same job (a retry after a failure,
a crash or a lost lease) gets that result back without calling the function again. So
a job that charges a card, then books a shipment, then sends a mail, and dies after the
charge, does not charge the card twice when it runs again.

The rules, decided once here:

- **Names** identify a step within its job: a string of 1 to 255 characters, without
  NUL or lone surrogates (:class:`InvalidStepError` otherwise). A job's steps need
  distinct names; the name of a step already finished returns its result, even within
  the same attempt. The same name running twice at once in one attempt is an
  :class:`InvalidStepError`.
- **Results** are JSON, checked by the encoder of job results. A function whose result
  is not JSON raises :class:`StepResultError`, a :class:`~pgqueue.PermanentError`: the
  job fails for good, as running it again would call the function again and fail the
  same way. Its side effects have happened by then, and nothing is recorded.
- **What a step returns** is its result decoded from the stored JSON, on the first run
  as on a replay: a tuple comes back as a list, a dict's keys as strings. A task thus
  behaves the same whichever attempt runs it.
- **A function that raises** records nothing: the exception goes on up (the attempt
  fails as usual) and the next attempt runs the step again. A step is therefore done
  at least once, and exactly once if it finished and its record was written; a crash
  between the two (the function returned, the record was not yet committed) runs it
  again. Steps that call other systems should pass those an idempotency key where
  they take one (the job id and the step name make a good one).
- **The record is written only while the attempt holds its job** (running, and this
  attempt the latest). Otherwise the job was rescued (the worker lost its lease) or
  cancelled while the step ran: :class:`~pgqueue.worker.steps.JobLostError` stops the
  task, and the worker writes no outcome for it.
- **Where the record goes**: for most tasks, through the worker's own connections,
  committed at once. For a transactional task, on the task's own connection, inside
  its transaction: a step's database writes and its record commit together, and roll
  back together (a failed attempt keeps no step, and the next one runs them all
  again). Its record is written on that connection once the function has returned,
  so run a transactional task's steps one after the other, not at once. In inline
  mode (``Queue(inline=True)``), in memory with the job.
- **Async and sync**: ``await step(...)`` in an async task takes an async function (it
  is awaited) or a plain one (called on the event loop: keep it short, or pass
  ``asyncio.to_thread, blocking_fn, arg`` as the function and its arguments).
  ``step_sync(...)`` is for plain-function tasks, running in a worker thread, and takes
  plain functions only. Steps are not available to ``process=True`` tasks.
- **Cost**: one read of the job's steps at an attempt's first step, then one write per
  step run; a replay costs nothing more.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from pgqueue.checks import encode_json
from pgqueue.errors import InvalidJobError, PermanentError, PgQueueError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

__all__ = [
    "MAX_STEP_NAME_LENGTH",
    "InvalidStepError",
    "JobStep",
    "StepError",
    "StepLog",
    "StepResultError",
    "StepStore",
]

MAX_STEP_NAME_LENGTH = 255  # as the job_steps_name_check constraint

_log = structlog.get_logger("pgqueue.steps")


class StepError(PgQueueError):
    """Base class of the errors of durable steps."""


class InvalidStepError(StepError, ValueError):
    """A step that cannot be run as asked: its name is not a string of 1 to 255
    characters without NUL or lone surrogates, or a step of that name is already
    running in this attempt. Raised before the step's function is called."""


class StepResultError(StepError, PermanentError):
    """A step's function returned something that is not JSON. The job fails for good
    (running it again would call the function again); nothing is recorded."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobStep:
    """A step a job finished, as stored (``Queue.job_steps``): its name, its result
    (decoded JSON), the attempt that ran it and when that attempt recorded it."""

    name: str
    result: Any
    attempt: int
    finished_at: datetime


def step_from_row(row: Any) -> JobStep:
    """A ``job_steps`` row (either driver's) as a JobStep."""
    return JobStep(row["name"], json.loads(row["result"]), row["attempt"], row["finished_at"])


class StepStore(Protocol):
    """Where a job's steps are read and recorded: the worker's connections, a
    transactional task's own, or inline mode's memory. ``load`` gives each finished
    step's result as JSON text; ``save`` records a result if the attempt still holds
    its job and returns the JSON text stored under the name (another's, if that was
    recorded first), or raises when the attempt no longer holds its job."""

    async def load(self, job_id: int, /) -> dict[str, str]: ...

    async def save(self, job_id: int, attempt: int, name: str, result_json: str, /) -> str: ...

    def load_sync(self, job_id: int, /) -> dict[str, str]: ...

    def save_sync(self, job_id: int, attempt: int, name: str, result_json: str, /) -> str: ...


class StepLog:
    """One attempt's steps, kept on its ``RunningJob``: the store a transactional task's
    steps go to (None: the worker's), the results known (read once, at the first
    step), and the names running now."""

    __slots__ = ("done", "running", "transaction")

    def __init__(self) -> None:
        self.transaction: StepStore | None = None
        self.done: dict[str, str] | None = None
        self.running: set[str] = set()

    def begin(self, name: str) -> None:
        if name in self.running:
            raise InvalidStepError(
                f"step {name!r} is already running in this attempt: give each step of a "
                "job its own name"
            )
        self.running.add(name)


def check_step_name(name: object) -> str:
    """``name`` if it can name a step, else InvalidStepError."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_STEP_NAME_LENGTH
        or "\x00" in name
        or not _utf8_encodable(name)
    ):
        shown = repr(name)
        shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
        raise InvalidStepError(
            f"a step name must be a string of 1-{MAX_STEP_NAME_LENGTH} characters without "
            f"NUL or lone surrogates, got {shown}"
        )
    return name


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def encode_step_result(value: Any, name: str) -> str:
    try:
        return encode_json(value, f"the result of step {name!r}")
    except InvalidJobError as exc:
        raise StepResultError(str(exc)) from exc


async def run_step(
    store: StepStore, log: StepLog, job: tuple[int, int], name: object, call: Callable[[], Any]
) -> Any:
    """``RunningJob.step``: the stored result of step ``name`` of ``job`` (its id and
    attempt), or else what ``call()`` returns (awaited if awaitable), recorded."""
    name = check_step_name(name)
    job_id, attempt = job
    if log.done is None:
        loaded = await store.load(job_id)
        if log.done is None:  # another step of this attempt may have read them meanwhile
            log.done = loaded
    stored = log.done.get(name)
    if stored is not None:
        _log.info("step_replayed", job_id=job_id, attempt=attempt, step=name)
        return json.loads(stored)
    log.begin(name)
    try:
        value = call()
        if inspect.isawaitable(value):
            value = await value
        result_json = encode_step_result(value, name)
        stored = await store.save(job_id, attempt, name, result_json)
        log.done[name] = stored
    finally:
        log.running.discard(name)
    _log.debug("step_recorded", job_id=job_id, attempt=attempt, step=name)
    return json.loads(stored)


def run_step_sync(
    store: StepStore, log: StepLog, job: tuple[int, int], name: object, call: Callable[[], Any]
) -> Any:
    """``RunningJob.step_sync``: :func:`run_step` for plain functions in a thread."""
    name = check_step_name(name)
    if inspect.iscoroutinefunction(call):
        raise TypeError(
            f"step_sync({name!r}, ...) takes a plain function, not an async one: in an "
            "async task, use `await current_job().step(...)`"
        )
    job_id, attempt = job
    if log.done is None:
        loaded = store.load_sync(job_id)
        if log.done is None:
            log.done = loaded
    stored = log.done.get(name)
    if stored is not None:
        _log.info("step_replayed", job_id=job_id, attempt=attempt, step=name)
        return json.loads(stored)
    log.begin(name)
    try:
        value = call()
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it rather than leave a warning
            raise TypeError(
                f"the function of step {name!r} returned an awaitable: step_sync takes a "
                "plain function; in an async task, use `await current_job().step(...)`"
            )
        result_json = encode_step_result(value, name)
        stored = store.save_sync(job_id, attempt, name, result_json)
        log.done[name] = stored
    finally:
        log.running.discard(name)
    _log.debug("step_recorded", job_id=job_id, attempt=attempt, step=name)
    return json.loads(stored)
