"""Reads from a streaming replica (``pgqueue api --read-dsn``, ``PGQUEUE_READ_DSN``).

What reads there (``ServiceState.reading``): the dashboard's pages and fragments,
``/metrics``, and the GET endpoints (queues, jobs, workflows, schedules, limits,
sequences). What stays on the primary (``ServiceState.connection``): every write, API
keys (a revoked key must stop working at once, not when the replica catches up), the
login, and a status request with ``?wait=`` (its NOTIFY comes from the primary, and a
standby cannot LISTEN). Read-your-writes: a ``GET`` of one job, workflow, schedule or
queue's limits that the replica does not have yet is asked again of the primary, so
that a client that has just written it finds it; and a dashboard page an action
redirects to reads the primary, so that it shows the action done. Lists and counts may
lag. ``/readyz`` asks the primary only: reads do without the replica.

Each read first asks the replica how far behind it is (``Admin.replica_status``, one
short statement on the same connection) and the answer carries it:

- ``X-PgQueue-Read-From: replica`` or ``primary`` (the last read of the request);
- ``X-PgQueue-Replica-Lag``: seconds behind, when read from the replica and known;
- the dashboard's banner, and the ``pgqueue_read_replica_*`` metrics.

A replica that cannot be reached (or fails its status statement) is left alone for
``RETRY_SECONDS`` and reads go to the primary meanwhile, saying so; a replica that dies
in the middle of a read fails that request with 503, as the primary would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from litestar.enums import ScopeType
from prometheus_client.metrics_core import GaugeMetricFamily

from pgqueue.connect import asyncpg_pool
from pgqueue.dberrors import DATABASE_ERRORS, TRANSIENT_ERRORS
from pgqueue.errors import PgQueueError
from pgqueue.pools import keep_session

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from litestar import Request
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from prometheus_client.metrics_core import Metric

    from pgqueue.admin import Admin, ReplicaStatus

READ_FROM_HEADER = "x-pgqueue-read-from"
LAG_HEADER = "x-pgqueue-replica-lag"
# How long reads skip a replica that failed before it is tried again.
RETRY_SECONDS = 5.0
# The longest a read waits for a replica connection before it reads the primary.
CONNECT_SECONDS = 5.0
_NOTE = "pgqueue_read_note"
# What makes a read go to the primary instead: the replica away, or refusing.
_FAILURES: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, PgQueueError, TimeoutError)
_READ_FROM = READ_FROM_HEADER.encode()
_LAG = LAG_HEADER.encode()


@dataclasses.dataclass
class ReadNote:
    """Where one request's reads went: the last read's source, and the replica's lag."""

    source: str = ""  # "replica" or "primary"; "" before any read
    status: ReplicaStatus | None = None  # as the replica said, when it was read
    replica_down: bool = False  # a read meant for the replica went to the primary

    @property
    def from_replica(self) -> bool:
        return self.source == "replica"


def read_note(request: Request[Any, Any, Any] | None) -> ReadNote | None:
    """The request's note (``ReadHeaders`` put it there), if any."""
    if request is None:
        return None
    state = request.scope.get("state")
    note = state.get(_NOTE) if isinstance(state, dict) else None
    return note if isinstance(note, ReadNote) else None


def after_action(request: Request[Any, Any, Any]) -> bool:
    """A dashboard page that an action redirected to (``?notice=`` or ``?error=``): it
    reads the primary, so that it shows what was just done (read-your-writes)."""
    params = request.query_params
    return "notice" in params or "error" in params


def lag_text(status: ReplicaStatus | None) -> str:
    """The lag as the dashboard shows it: ``0.4 s behind``."""
    if status is None or status.lag_seconds is None:
        return "behind by an unknown time"
    if not status.receiving:
        return f"{status.lag_seconds:.1f} s behind, and not receiving from the primary"
    paused = ", replay paused" if status.replay_paused else ""
    return f"{status.lag_seconds:.1f} s behind{paused}"


def banner(note: ReadNote | None) -> str | None:
    """The dashboard's line about where a page was read, or None without a replica."""
    if note is None or not note.source:
        return None
    if note.from_replica:
        return f"Read from a replica, {lag_text(note.status)}."
    if note.replica_down:
        return "Read from the primary: the replica is unavailable."
    return None


class ReadReplica:
    """The replica's pool, and what the last look at it found."""

    def __init__(self, dsn: str, admin: Admin) -> None:
        self.dsn = dsn
        self._admin = admin
        self.pool: asyncpg.Pool[Any] | None = None
        self.last: ReplicaStatus | None = None
        self.up = True
        self._down_until = 0.0
        self._log = structlog.get_logger("pgqueue.service")

    async def start(self) -> None:
        # min_size 0: the service starts while the replica is away (reads the primary).
        self.pool = await asyncpg_pool(self.dsn, min_size=0, max_size=10, reset=keep_session)

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def mark_down(self, exc: BaseException) -> None:
        if self.up:
            self._log.warning("read_replica_unavailable", error=repr(exc))
        self.up = False
        self._down_until = time.monotonic() + RETRY_SECONDS

    async def take(self) -> tuple[Any, ReplicaStatus] | None:
        """A replica connection and the replica's status, or None (reads go to the
        primary): it failed within RETRY_SECONDS, or fails now."""
        if self.pool is None or time.monotonic() < self._down_until:
            return None
        conn = None
        try:
            conn = await self.pool.acquire(timeout=CONNECT_SECONDS)
            status = await self._admin.replica_status(conn=conn)
        except _FAILURES as exc:
            if conn is not None:
                conn.terminate()
                await self.pool.release(conn)
            self.mark_down(exc)
            return None
        if not self.up:
            self._log.info("read_replica_back")
        self.up = True
        self.last = status
        return conn, status

    async def give_back(self, conn: Any, *, sound: bool) -> None:
        if not sound:
            conn.terminate()
        if self.pool is not None:
            await self.pool.release(conn)


def sound_after(exc: BaseException) -> bool:
    """Whether a connection can go back to the pool after ``exc`` ended its block: an
    error the server reported leaves it so; a lost socket or a cancellation does not."""
    return isinstance(exc, asyncpg.PostgresError | PgQueueError) and not isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.AdminShutdownError
    )


class ReadHeaders:
    """Wraps the app: gives each HTTP request a ReadNote, and turns it into the
    ``X-PgQueue-Read-From`` and ``X-PgQueue-Replica-Lag`` headers of its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        note = ReadNote()
        state = scope.get("state")
        if not isinstance(state, dict):
            state = {}
            scope["state"] = state
        state[_NOTE] = note

        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start" and note.source:
                headers = [*message.get("headers", ()), (_READ_FROM, note.source.encode())]
                lag = note.status.lag_seconds if note.status is not None else None
                if note.from_replica and lag is not None:
                    headers.append((_LAG, f"{lag:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, send_noted)


class ReplicaCollector:
    """``pgqueue_read_replica_up`` (1 when the last read meant for the replica got it)
    and ``pgqueue_read_replica_lag_seconds`` (its lag then; left out when unknown), as of
    the last read, which a scrape itself makes (/metrics reads the replica)."""

    def __init__(self, replica: ReadReplica) -> None:
        self._replica = replica

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "pgqueue_read_replica_up",
            "1 when the last read meant for the read replica was served by it",
            value=1.0 if self._replica.up else 0.0,
        )
        last = self._replica.last
        if last is not None and last.lag_seconds is not None:
            yield GaugeMetricFamily(
                "pgqueue_read_replica_lag_seconds",
                "How far the read replica was behind the primary at its last read",
                value=last.lag_seconds,
            )


@contextlib.asynccontextmanager
async def on_replica(replica: ReadReplica, conn: Any) -> AsyncIterator[Any]:
    """``conn`` for a block, back to the replica's pool after it (closed if the block
    left it unsound); a lost replica marks it down."""
    try:
        yield conn
    except BaseException as exc:
        await replica.give_back(conn, sound=sound_after(exc))
        if isinstance(exc, TRANSIENT_ERRORS):  # not a cancellation: the replica is away
            replica.mark_down(exc)
        raise
    await replica.give_back(conn, sound=True)
