"""When a call on the Queue's own connections may be made again, and the bookkeeping of
its tries: plain logic shared by the async and sync faces (``pgqueue.pool_calls``)."""

from __future__ import annotations

import time

import psycopg_pool
import structlog

from pgqueue.dberrors import connection_failed, reconnect_delay, rolled_back
from pgqueue.errors import DatabaseUnavailableError, OutcomeUnknownError, PgQueueError

_log = structlog.get_logger("pgqueue.queue")

# How a call on the Queue's own connection got as far as it did.
ACQUIRING, RUNNING, DONE = 0, 1, 2


def retry_reason(exc: BaseException, stage: int, *, idempotent: bool) -> str | None:
    """Why a failed call may safely be made again, or None if it may not."""
    if isinstance(exc, PgQueueError | psycopg_pool.PoolClosed):
        return None  # our own verdicts (a pool timeout) are final, a closed pool too
    if stage == ACQUIRING:
        return "unreachable" if connection_failed(exc) else None
    if rolled_back(exc):
        return "rolled_back"
    if idempotent and connection_failed(exc):
        return "connection_lost"
    return None


def outcome_unknown(exc: BaseException) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"the connection to PostgreSQL was lost while the statement was in flight "
        f"({type(exc).__name__}: {exc}); it may have committed or not"
    )


class CallRetrier:
    """The bookkeeping of one call's retries: its deadline, the backoff, the logs."""

    __slots__ = ("deadline", "failures", "maybe_written")

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.failures = 0
        # A try lost its connection mid-statement: from then on, giving up cannot
        # promise that nothing was written.
        self.maybe_written: BaseException | None = None

    def pause(self, exc: Exception, reason: str) -> float:
        """The pause before the next try; raises instead once the deadline has passed."""
        self.failures += 1
        if reason == "connection_lost" and self.maybe_written is None:
            self.maybe_written = exc
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if self.maybe_written is not None:
                raise outcome_unknown(self.maybe_written) from exc
            if reason == "rolled_back":
                raise exc  # the server's own error says best what keeps going wrong
            raise DatabaseUnavailableError(
                f"PostgreSQL could not be reached in {self.failures} tries within the pool "
                f"timeout ({type(exc).__name__}: {exc}); nothing was written"
            ) from exc
        delay = min(reconnect_delay(self.failures), remaining)
        _log.warning(
            "queue_call_retrying",
            reason=reason,
            error=f"{type(exc).__name__}: {exc}",
            attempt=self.failures,
            retry_in=round(delay, 3),
        )
        return delay

    def succeeded(self) -> None:
        if self.failures:
            _log.info("queue_call_recovered", retries=self.failures)
