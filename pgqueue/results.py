"""Waiting for jobs to finish: what ``Queue.wait`` and ``Queue.result`` (and their
``_sync`` twins) stand on.

A job reaching a terminal state sends NOTIFY on ``pgqueue_finished``
(``pgqueue.notify_finished`` in ``sql/schema.sql``: the ids comma-separated, or ``*``
when they would not fit). In an event loop, every wait of one Queue shares ONE LISTEN
connection (:class:`FinishedWaiters`): a registry of futures by job id, and one task
that reads the announced jobs, several in one statement, and resolves their futures.
A notification can be lost (the connection dropped, a job finished by hand without
one), so that task also reads every waited job again every :data:`POLL_SECONDS` and
after each reconnect: a lost notification delays a wake-up, it never loses it.

A sync wait (:func:`wait_sync`) listens on a psycopg connection of its own for the
length of the call: simple, and a thread blocked in it holds nothing anyone else needs.

Both LISTEN on :func:`pgqueue.connect.listen_dsn`: the Queue's DSN, or the direct DSN
given beside a transaction pooler. Behind a pooler with no direct DSN, a LISTEN would be
lost with the server connection it ran on: waits then only poll (every
:data:`POLL_SECONDS`), on a connection through the pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgqueue import driver, driver_sync
from pgqueue.connect import asyncpg_connect, listen_dsn, psycopg_connect_args
from pgqueue.dberrors import DATABASE_ERRORS
from pgqueue.errors import (
    JobFailedError,
    JobNotFoundError,
    PgQueueError,
    SchemaNotReadyError,
    WaitTimeoutError,
)
from pgqueue.executors import AsyncpgExecutor, PsycopgExecutor
from pgqueue.limits import MAX_SECONDS
from pgqueue.states import JobState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from pgqueue.jobs import Job

FINISHED_CHANNEL = "pgqueue_finished"
# How often every waited job is read again without a notification (the safety net for
# a lost one): rarely enough to cost nothing (one statement for all of a loop's
# waiters), often enough that a missed wake-up is late by at most this much.
POLL_SECONDS = 1.5
# Backoff between attempts to (re)open the LISTEN connection.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0
# The application_name of waiting connections (pg_stat_activity shows who listens).
WAITER_APPLICATION_NAME = "pgqueue-waiter"

_log = structlog.get_logger("pgqueue.queue")


def check_wait_timeout(timeout: float | None) -> float | None:
    """A wait's timeout in seconds: positive and finite, or None for no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError("timeout must be a number of seconds or None")
    if not 0 < timeout <= MAX_SECONDS:  # also refuses NaN
        raise ValueError(f"timeout must be more than 0 and at most {MAX_SECONDS} seconds")
    return float(timeout)


def result_of(job: Job) -> Any:
    """A finished job's return value (decoded JSON); :class:`JobFailedError`, with its
    state and last error, for a job that failed or was cancelled."""
    if job.state is JobState.SUCCEEDED:
        return job.result
    raise JobFailedError(job)


def announced_ids(payload: str) -> list[int] | None:
    """The job ids a ``pgqueue_finished`` payload announces; None for ``*`` (too many
    to list: every waited job may have finished)."""
    if payload.strip() == "*":
        return None
    ids = []
    for part in payload.split(","):
        with contextlib.suppress(ValueError):
            ids.append(int(part))
    return ids


def _announces(payload: str, job_id: int) -> bool:
    ids = announced_ids(payload)
    return ids is None or job_id in ids


class FinishedWaiters:
    """The waits of one Queue in one event loop, on one LISTEN connection opened at the
    first wait and kept (re-opened when lost) until :meth:`close`."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiting: dict[int, set[asyncio.Future[Job]]] = {}
        self._due: set[int] = set()  # waited ids to read at the next look
        self._all_due = False  # read every waited id at the next look
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def wait(self, job_id: int, timeout: float | None) -> Job:
        """The job once finished; WaitTimeoutError after ``timeout`` seconds (None: no
        limit), JobNotFoundError if there is no such job."""
        if self._closed:
            raise PgQueueError("this Queue has been closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Job] = loop.create_future()
        self._waiting.setdefault(job_id, set()).add(future)
        # Read at the listener's next look, which comes after its LISTEN: a job that
        # finished before this wait began is seen there.
        self._due.add(job_id)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="pgqueue-finished-listener")
        # A timer on the future itself: cheaper than a task per wait (asyncio.wait_for)
        # when a thousand waits wake at once.
        timer = (
            None if timeout is None else loop.call_later(timeout, _expire, future, job_id, timeout)
        )
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiting[job_id]

    async def close(self) -> None:
        """Stop listening; waits still under way raise PgQueueError."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))  # never raises: a cancelled close goes on
            self._task = None
        for job_id in list(self._waiting):
            self._fail(job_id, lambda: PgQueueError("the Queue was closed during the wait"))

    # --- the listener task ------------------------------------------------------------

    async def _listen(self) -> None:
        """Listen until :meth:`close`, through reconnects; ends (for the next wait to
        start again) when the connection is lost while nobody waits."""
        pause = RECONNECT_FIRST
        listen = listen_dsn(self._dsn)
        while self._waiting:
            conn: Any = None
            try:
                conn = await asyncpg_connect(
                    listen or self._dsn,
                    server_settings={"application_name": WAITER_APPLICATION_NAME},
                )
                if listen is not None:
                    await conn.add_listener(FINISHED_CHANNEL, self._on_notify)
                conn.add_termination_listener(lambda _conn: self._wake.set())
                pause = RECONNECT_FIRST
                await self._serve(conn)
            except DATABASE_ERRORS as exc:
                _log.warning(
                    "finished_listener_lost",
                    error=repr(exc),
                    waiting=len(self._waiting),
                    retry_in=pause,
                )
            finally:
                if conn is not None:
                    conn.terminate()
            if self._waiting:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        ids = announced_ids(str(payload))
        if ids is None:
            self._all_due = True
        else:
            self._due.update(i for i in ids if i in self._waiting)
        self._wake.set()

    async def _serve(self, conn: Any) -> None:
        """Look at the jobs due until the connection is lost. LISTEN is on: whatever
        finished before (while connecting, or while a previous connection was down)
        sent its notification to nobody, so the first look reads every waited job."""
        loop = asyncio.get_running_loop()
        ex = AsyncpgExecutor(conn)
        self._all_due = True
        next_poll = loop.time()
        while True:
            if conn.is_closed():
                raise ConnectionError("the LISTEN connection was closed")
            self._wake.clear()  # before taking what is due: a later NOTIFY sets it again
            if loop.time() >= next_poll:
                self._all_due = True
            if self._all_due:
                next_poll = loop.time() + POLL_SECONDS
                ids = list(self._waiting)
            else:
                ids = [i for i in self._due if i in self._waiting]
            self._all_due = False
            self._due.clear()
            if ids:
                await self._look(ex, ids)
                continue
            timeout = next_poll - loop.time() if self._waiting else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _look(self, ex: AsyncpgExecutor, ids: list[int]) -> None:
        try:
            finished, missing = await driver.wait_jobs(ex, ids)
        except SchemaNotReadyError as exc:
            for job_id in ids:
                self._fail(job_id, functools.partial(_same, exc))
            return
        for job in finished:
            for future in self._pending(job.id):
                future.set_result(job)
        for job_id in missing:
            self._fail(job_id, functools.partial(_not_found, job_id))

    def _pending(self, job_id: int) -> list[asyncio.Future[Job]]:
        return [f for f in self._waiting.get(job_id, ()) if not f.done()]

    def _fail(self, job_id: int, error: Callable[[], BaseException]) -> None:
        """Fail the waits for ``job_id`` with what ``error`` makes (a new exception each,
        except a failure shared by every wait, such as a missing schema)."""
        for future in self._pending(job_id):
            future.set_exception(error())


def _expire(future: asyncio.Future[Job], job_id: int, timeout: float) -> None:
    if not future.done():
        future.set_exception(WaitTimeoutError(job_id, timeout))


def _same(exc: BaseException) -> BaseException:
    return exc


def _not_found(job_id: int) -> JobNotFoundError:
    return JobNotFoundError(f"there is no job {job_id}")


# --- the sync face -------------------------------------------------------------------


def wait_sync(dsn: str, job_id: int, timeout: float | None) -> Job:
    """:meth:`FinishedWaiters.wait` for a sync caller, on a LISTEN connection of its own
    for the call (re-opened if lost, with the job read again each time). A lost
    connection's reconnect may overrun ``timeout`` by up to the connect timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = RECONNECT_FIRST
    listen = listen_dsn(dsn)
    connect_to = listen or dsn
    while True:
        try:
            with psycopg.connect(
                connect_to,
                autocommit=True,
                application_name=WAITER_APPLICATION_NAME,
                **psycopg_connect_args(connect_to),
            ) as conn:
                ex = PsycopgExecutor(conn)
                if listen is not None:
                    driver_sync.listen_finished(ex)
                pause = RECONNECT_FIRST
                while True:
                    # After LISTEN: a job that finished before is seen here, one that
                    # finishes after sends a notification this connection gets.
                    finished, missing = driver_sync.wait_jobs(ex, [job_id])
                    if finished:
                        return finished[0]
                    if missing:
                        raise _not_found(job_id)
                    left = _left(deadline, job_id, timeout)
                    _sleep_until_announced(conn, job_id, min(left, POLL_SECONDS))
        except psycopg.OperationalError as exc:
            left = _left(deadline, job_id, timeout)
            _log.warning("finished_listener_lost", error=repr(exc), job_id=job_id, retry_in=pause)
            time.sleep(min(pause, left))
            pause = min(pause * 2, RECONNECT_MAX)


def _left(deadline: float | None, job_id: int, timeout: float | None) -> float:
    """Seconds left before ``deadline`` (infinite without one); WaitTimeoutError when
    none are."""
    if deadline is None:
        return math.inf
    left = deadline - time.monotonic()
    if left <= 0:
        raise WaitTimeoutError(job_id, timeout or 0.0)
    return left


def _sleep_until_announced(conn: psycopg.Connection[Any], job_id: int, seconds: float) -> None:
    """Return when ``job_id`` is announced finished, or after ``seconds``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        notes: Iterable[psycopg.Notify] = conn.notifies(timeout=left, stop_after=1)
        if any(_announces(note.payload, job_id) for note in notes):
            return
