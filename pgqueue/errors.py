"""The exceptions pgqueue raises. Each says what was wrong; none leaves a write behind."""

from __future__ import annotations


class PgQueueError(Exception):
    """Base class of every pgqueue error."""


class InvalidJobError(PgQueueError, ValueError):
    """A job could not be built: bad arguments, queue name, priority and so on.

    Raised before anything is sent to the database, so nothing is written.
    """


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


class Snooze(Exception):  # noqa: N818 - a request, not an error
    """Raise from a task to run it again ``after`` seconds from now, without counting
    an attempt or recording an error (the thing it waits for is not ready yet)."""

    def __init__(self, after: float) -> None:
        if not after >= 0:
            raise ValueError("Snooze(after=...) takes a non-negative number of seconds")
        super().__init__(f"snoozed for {after} s")
        self.after = float(after)


# SQLSTATEs pgqueue's SQL functions raise, as the typed errors they mean.
_SQLSTATE_ERRORS: dict[str, type[PgQueueError]] = {
    "P0002": JobNotFoundError,  # no_data_found
    "55000": JobStateError,  # object_not_in_prerequisite_state
    "23505": IdempotencyConflictError,  # unique_violation: the key is held again
}


def translate_db_error(exc: Exception) -> PgQueueError | None:
    """The typed error for a database error from either driver, if it is one of ours."""
    sqlstate = getattr(exc, "sqlstate", None)
    error_class = _SQLSTATE_ERRORS.get(sqlstate) if isinstance(sqlstate, str) else None
    if error_class is None:
        return None
    message = getattr(exc, "message", None) or str(exc)
    return error_class(str(message).removeprefix("pgqueue: "))
