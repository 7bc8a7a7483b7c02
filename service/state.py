"""What the app holds while it runs: its settings, its connection pool (and the read
replica's, replica.py), the API-key cache and the listener that wakes long-polling
status requests."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import structlog

from pgqueue.admin import Admin
from pgqueue.app import Queue
from pgqueue.connect import asyncpg_connect, asyncpg_pool, listen_dsn
from pgqueue.dberrors import TRANSIENT_ERRORS
from pgqueue.errors import DatabaseUnavailableError
from pgqueue.pools import acquire, keep_session

from .auth import KeyCache
from .replica import ReadReplica, on_replica, read_note

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from litestar import Request

    from .settings import ServiceSettings

T = TypeVar("T")
FINISHED_CHANNEL = "pgqueue_finished"
# The listener's safety net: a waiter looks again this often even without a NOTIFY
# (a lost notification, a job finished by hand from psql without one).
RECHECK_SECONDS = 5.0


class FinishedJobs:
    """One LISTEN connection for the whole process; status requests that wait for a
    job to finish register here and are woken when its id is announced."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()
        self._log = structlog.get_logger("pgqueue.service")

    async def _ensure_listening(self) -> None:
        listen = listen_dsn(self._dsn)
        if listen is None:  # a transaction pooler and no direct DSN: waits recheck only
            return
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            self._conn = await asyncpg_connect(listen)
            await self._conn.add_listener(FINISHED_CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        text = str(payload)
        if text == "*":
            events = [e for waiters in self._waiters.values() for e in waiters]
        else:
            events = []
            for part in text.split(","):
                with contextlib.suppress(ValueError):
                    events.extend(self._waiters.get(int(part), ()))
        for event in events:
            event.set()

    @contextlib.asynccontextmanager
    async def watch(self, job_id: int) -> AsyncIterator[asyncio.Event]:
        """An event set when ``job_id`` is announced finished; LISTEN is on before the
        caller's next look at the job, so a finish in between is not missed."""
        try:
            await self._ensure_listening()
        except (OSError, asyncpg.PostgresError) as exc:
            self._log.warning("finished_listener_failed", error=repr(exc))
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class ServiceState:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool[Any] | None = None
        self.keys = KeyCache(self, settings.key_cache_seconds)
        self.finished = FinishedJobs(settings.dsn)
        # For building jobs and the admin calls: every call passes a connection of the
        # service's pool, so neither opens connections of its own.
        self.queue = Queue(settings.dsn)
        self.admin = Admin(self.queue)
        self.replica = None if not settings.read_dsn else ReadReplica(settings.read_dsn, self.admin)

    async def start(self) -> None:
        self.pool = await asyncpg_pool(
            # min_size 0: no connection at start, so the service starts (and /readyz
            # answers 503) while the database is away, instead of failing to boot.
            self.settings.dsn,
            min_size=0,
            max_size=10,
            reset=keep_session,
        )

        if self.replica is not None:
            await self.replica.start()

    async def stop(self) -> None:
        await self.finished.close()
        if self.replica is not None:
            await self.replica.stop()
        if self.pool is not None:
            await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection to the primary: for writes, and reads that must be current."""
        if self.pool is None:
            raise RuntimeError("the service's pool is not open (app not started)")
        with _unavailable_as_503():
            async with acquire(self.pool) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def reading(
        self, request: Request[Any, Any, Any] | None = None, *, primary: bool = False
    ) -> AsyncIterator[Any]:
        """A connection for reads that may lag: the read replica's when there is one
        and it answers, else the primary's (``primary``: the primary's anyway). The
        request's note records which, and the replica's lag (replica.py)."""
        note = read_note(request)
        replica = None if primary else self.replica
        taken = None if replica is None else await replica.take()
        if replica is None or taken is None:
            if note is not None and self.replica is not None:
                note.source = "primary"
                note.replica_down = replica is not None
            async with self.connection() as conn:
                yield conn
            return
        conn, status = taken
        if note is not None:
            note.source, note.status = "replica", status
        with _unavailable_as_503():
            async with on_replica(replica, conn):
                yield conn

    async def read_one(
        self, request: Request[Any, Any, Any], call: Callable[[Any], Awaitable[T]]
    ) -> T:
        """``call(conn)`` for one named thing (a job, a workflow, a schedule), on a
        reading connection; when the replica has not got it (None, or a LookupError),
        on the primary: a client that has just written it finds it (read-your-writes)."""
        async with self.reading(request) as conn:
            try:
                found = await call(conn)
            except LookupError:
                if not _from_replica(request):
                    raise
            else:
                if found is not None or not _from_replica(request):
                    return found
        async with self.reading(request, primary=True) as conn:
            return await call(conn)


def _from_replica(request: Request[Any, Any, Any]) -> bool:
    note = read_note(request)
    return note is not None and note.from_replica


@contextlib.contextmanager
def _unavailable_as_503() -> Iterator[None]:
    try:
        yield
    except TRANSIENT_ERRORS as exc:
        # Connecting failed, or the connection died under a statement: the database is
        # away, not the request wrong (503, problems.py). The cause is logged, never
        # shown: it names hosts and ports.
        structlog.get_logger("pgqueue.service").warning("database_unavailable", error=repr(exc))
        raise DatabaseUnavailableError(
            "the database is unavailable at the moment; try again shortly"
        ) from exc


def service_state(request: Request[Any, Any, Any]) -> ServiceState:
    """The running service's state, as the app's lifespan left it."""
    service: ServiceState = request.app.state.pgqueue
    return service
