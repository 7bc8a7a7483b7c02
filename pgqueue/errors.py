"""The exceptions pgqueue raises. Each says what was wrong; none leaves a write behind."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgqueue.limits import MAX_SECONDS

if TYPE_CHECKING:
    from pgqueue.jobs import Job


class PgQueueError(Exception):
    """Base class of every pgqueue error."""


class InvalidJobError(PgQueueError, ValueError):
    """A job could not be built: bad arguments, queue name, priority and so on.

    Raised before anything is sent to the database, so nothing is written. ``field``
    names the offending field when there is one (``"delay"``, ``"args"``...), ``index``
    the offending item of a batch (``Queue.enqueue_many``, ``POST /v1/jobs/batch``).
    """

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index


class SchemaNotReadyError(PgQueueError):
    """The database has no pgqueue schema, or an older one than this pgqueue needs:
    run ``pgqueue migrate`` (or ``alembic upgrade head``) against it."""


class UnknownTaskError(PgQueueError, LookupError):
    """No task of that name is registered with this Queue."""


class UnsupportedConnectionError(PgQueueError, TypeError):
    """The ``conn=`` object is not a connection pgqueue can enqueue on."""


class IdempotencyConflictError(PgQueueError):
    """An idempotency key's holder could not be read back (for example under
    REPEATABLE READ, where the committed holder is invisible to the snapshot)."""


class PermanentError(PgQueueError):
    """Raise from a task to fail the job at once, without further retries."""


class JobNotFoundError(PgQueueError, LookupError):
    """No job has that id."""


class JobStateError(PgQueueError):
    """The job is in a state that does not allow the operation (cancelling a finished
    job, retrying one that has not failed)."""


class JobTimeoutError(PgQueueError):
    """An attempt ran past its timeout (the job's, else its task's). Recorded as the
    attempt's error; the job is retried like after any other failure."""


class PoolTimeoutError(PgQueueError, TimeoutError):
    """Every connection of the Queue's own pool stayed busy for ``pool_timeout``
    seconds. Nothing was sent, so nothing was written: the call may be made again."""


class DatabaseUnavailableError(PgQueueError, ConnectionError):
    """The database could not be reached (down, restarting, refusing connections) for
    ``pool_timeout`` seconds of retrying with backoff. Nothing was written."""


class OutcomeUnknownError(PgQueueError):
    """The connection was lost while the statement was in flight, so whether it
    committed is unknown: the job may exist or not. pgqueue retries such a call by
    itself only when that is safe (a job with an idempotency key, a read). Otherwise
    look the job up (or enqueue it again with an idempotency key next time)."""


class WaitTimeoutError(PgQueueError, TimeoutError):
    """A wait for a job (``Queue.wait``, ``Queue.result`` and their ``_sync`` twins)
    ended before the job finished. The job is untouched and may still finish: wait
    again, or cancel it. ``job_id`` and ``timeout`` (seconds) say which wait."""

    def __init__(self, job_id: int, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g} s")
        self.job_id = job_id
        self.timeout = timeout


class JobFailedError(PgQueueError):
    """The job a ``Queue.result`` call waited for finished without a return value: it
    failed for good or was cancelled. ``job`` is the job as stored, ``state`` its final
    state, and ``error`` its last error entry (``type``, ``message``, ``traceback``,
    ``attempt``, ``at``), or None when it never failed an attempt (cancelled first)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.state = job.state
        self.error: dict[str, Any] | None = job.errors[-1] if job.errors else None
        reason = ""
        if self.error is not None:
            reason = f": {self.error.get('type')}: {self.error.get('message')}"
        super().__init__(f"job {job.id} ({job.task}) {job.state}{reason}")


class ScheduleNotFoundError(PgQueueError, LookupError):
    """No schedule has this name."""


class InvalidLimitError(PgQueueError, ValueError):
    """A limit that cannot be: not a positive count, an unknown rate, a bad key."""


class Snooze(Exception):  # noqa: N818 - a request, not an error
    """Raise from a task to run it again ``after`` seconds from now, without counting
    an attempt or recording an error (the thing it waits for is not ready yet)."""

    def __init__(self, after: float) -> None:
        if not 0 <= after <= MAX_SECONDS:  # also refuses NaN
            raise ValueError(f"Snooze(after=...) takes a number of seconds from 0 to {MAX_SECONDS}")
        super().__init__(f"snoozed for {after} s")
        self.after = float(after)


# SQLSTATEs pgqueue's SQL functions raise, as the typed errors they mean.
_SQLSTATE_ERRORS: dict[str, type[PgQueueError]] = {
    "P0002": JobNotFoundError,  # no_data_found
    "55000": JobStateError,  # object_not_in_prerequisite_state
    "23505": IdempotencyConflictError,  # unique_violation: the key is held again
}


def primary_message(exc: BaseException) -> str:
    """A database error's primary message alone: never its CONTEXT or DETAIL lines,
    which quote PL/pgSQL internals rather than speak to whoever called."""
    diag = getattr(exc, "diag", None)  # psycopg's; asyncpg's errors carry .message
    message = getattr(diag, "message_primary", None) or getattr(exc, "message", None) or str(exc)
    return str(message).split("\n", 1)[0]


def translate_db_error(exc: Exception) -> PgQueueError | None:
    """The typed error for a database error from either driver, if it is one of ours."""
    sqlstate = getattr(exc, "sqlstate", None)
    error_class = _SQLSTATE_ERRORS.get(sqlstate) if isinstance(sqlstate, str) else None
    if error_class is None:
        return None
    return error_class(primary_message(exc).removeprefix("pgqueue: "))


# What a statement of pgqueue's meets in a database never migrated, or migrated by an
# older pgqueue: undefined_table, invalid_schema_name, undefined_function,
# undefined_object (a type) and undefined_column.
_SCHEMA_SQLSTATES = frozenset({"42P01", "3F000", "42883", "42704", "42703"})


def schema_not_ready(exc: BaseException) -> SchemaNotReadyError | None:
    """SchemaNotReadyError for an error a pgqueue statement gets where the pgqueue
    schema is missing or older than this pgqueue; None for any other error."""
    if getattr(exc, "sqlstate", None) not in _SCHEMA_SQLSTATES:
        return None
    return SchemaNotReadyError(
        f"the pgqueue schema is missing or out of date in this database "
        f"({primary_message(exc)}): run `pgqueue migrate`"
    )


class InlineModeError(PgQueueError):
    """A call that a Queue in inline mode cannot make: it needs the database (a worker,
    cancel, retry, schedules, limits, stats, the admin calls), a transactional task's
    connection, or a job to be run later (waiting for a snoozed job)."""
