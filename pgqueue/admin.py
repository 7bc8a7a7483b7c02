"""The admin API: what an operator's tools ask of a queue beyond enqueueing and running.

Browse and page through jobs, read a job, cancel or retry it, read and pause queues,
manage API keys, and read the figures a dashboard or a metrics exporter shows. pgqueue's
HTTP service (``pgqueue.service``: its REST API, dashboard and ``/metrics``) is built on
these calls and nothing else, so that a tool of your own can do whatever it does::

    from pgqueue import Admin, Queue

    queue = Queue(dsn)
    admin = Admin(queue)
    page = await admin.list_jobs(queue="emails", state=JobState.FAILED, limit=20)
    for job in page.jobs:
        await admin.retry_job(job.id)
    older = await admin.list_jobs(queue="emails", before=page.next_cursor)

Every call takes an optional ``conn=``: a connection of yours (asyncpg, psycopg, or a
SQLAlchemy connection or session on either, as for :meth:`Queue.enqueue`), on which it
runs inside your transaction if one is open; without one it runs on the Queue's own
connections, with their retries. The calls are async; those the ``pgqueue keys`` command
needs also have a ``_sync`` twin. Values come back typed: :class:`~pgqueue.Job`,
:class:`~pgqueue.QueueStats`, and the small records defined here.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from pgqueue import driver, driver_sync
from pgqueue.errors import InvalidJobError, JobNotFoundError, PgQueueError
from pgqueue.executors import (
    AsyncpgExecutor,
    PsycopgExecutor,
    async_executor_for,
    sync_executor_for,
)
from pgqueue.jobs import check_spec, validate_job_id, validate_queue_name, validate_task_name
from pgqueue.limits import JOB_ID_MAX
from pgqueue.states import JobState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from pgqueue.app import Queue
    from pgqueue.executors import AsyncExecutor, SyncExecutor
    from pgqueue.jobs import Job, JobSpec, QueueStats

T = TypeVar("T")

ApiKeyScope = Literal["read", "enqueue", "admin"]
# Scopes nest, each granting what those before it grant.
API_KEY_SCOPES: tuple[ApiKeyScope, ...] = ("read", "enqueue", "admin")
API_KEY_PREFIX = "pgq_"
API_KEY_NAME_MAX = 100


class InvalidApiKeyError(PgQueueError, ValueError):
    """An API key could not be created as asked (a bad name or scope); nothing was
    written."""


class JobPage(NamedTuple):
    """One page of :meth:`Admin.list_jobs`, newest job first."""

    jobs: list[Job]
    # Pass it as ``before`` for the next (older) page; None on the last page.
    next_cursor: int | None


class EnqueuedJob(NamedTuple):
    """What :meth:`Admin.enqueue_job` did, and the job as it now stands."""

    id: int
    # True: a job already held the idempotency key, and ``job`` is that one.
    duplicate: bool
    # None only when the key's holder was deleted between the enqueue and the read.
    job: Job | None


class Throughput(NamedTuple):
    """Jobs of one queue that finished in one minute of :meth:`Admin.throughput`'s
    window (a sliding window: minute 0 is the last 60 seconds)."""

    queue: str
    minutes_ago: int
    finished: int
    failed: int  # of those finished


class JobCounts(NamedTuple):
    """The jobs of one queue and task whose last run time fell in one duration bucket
    (see :meth:`Admin.job_counts`): counts by state, and the figures a metrics exporter
    needs."""

    queue: str
    task: str
    # How many bounds lie below the run time (len(bounds): above them all); None for
    # jobs that have not finished, or finished without running (cancelled while queued).
    bucket: int | None
    total: int
    claimable: int  # queued and due
    scheduled: int  # queued for later
    running: int
    succeeded: int
    failed: int
    cancelled: int
    retries: int  # attempts beyond each job's first
    oldest_claimable_age: float | None  # seconds
    duration_sum: float  # seconds, over the succeeded and failed jobs


class QueueSettings(NamedTuple):
    """A queue with settings of its own (listed even when it holds no job)."""

    name: str
    paused: bool


class ApiKey(NamedTuple):
    """An API key as stored: never the key itself, only its SHA-256 is kept."""

    id: int
    name: str
    scope: ApiKeyScope
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class LiveApiKey(NamedTuple):
    """Whom a presented key belongs to: a key that exists and is not revoked."""

    id: int
    name: str
    scope: ApiKeyScope


class NewApiKey(NamedTuple):
    """A key just created: ``key`` is shown this once and stored nowhere."""

    id: int
    key: str


def hash_api_key(key: str) -> bytes:
    """The digest stored for a key (SHA-256 of its text)."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def validate_api_key_request(name: object, scope: object) -> None:
    """The checks :meth:`Admin.create_api_key` makes before writing anything (for a
    caller that would rather fail before it connects): InvalidApiKeyError."""
    if scope not in API_KEY_SCOPES:
        raise InvalidApiKeyError(f"scope must be one of {', '.join(API_KEY_SCOPES)}; got {scope!r}")
    if not isinstance(name, str) or not 1 <= len(name) <= API_KEY_NAME_MAX:
        raise InvalidApiKeyError(f"name must be 1-{API_KEY_NAME_MAX} characters")


def _new_key(name: str, scope: str) -> tuple[str, bytes]:
    validate_api_key_request(name, scope)
    # 256 random bits.
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def _named(record: type[Any], row: Any) -> Any:
    # By column name, so that a column added to (or moved in) a statement changes nothing.
    return record(**{field: row[field] for field in record._fields})


class Admin:
    """The admin calls on ``queue``'s database (see the module's description)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    # --- running ------------------------------------------------------------------------

    async def _run(
        self,
        op: Callable[[AsyncExecutor], Awaitable[T]],
        conn: Any,
        *,
        idempotent: bool,
    ) -> T:
        if conn is not None:
            return await op(await async_executor_for(conn))
        conns = self.queue._async_connections()  # noqa: SLF001 - the Queue's own pools
        return await conns.run(lambda own: op(AsyncpgExecutor(own)), idempotent=idempotent)

    def _run_sync(self, op: Callable[[SyncExecutor], T], conn: Any, *, idempotent: bool) -> T:
        if conn is not None:
            return op(sync_executor_for(conn))
        conns = self.queue._sync_connections()  # noqa: SLF001 - the Queue's own pools
        return conns.run(lambda own: op(PsycopgExecutor(own, own=True)), idempotent=idempotent)

    # --- jobs ---------------------------------------------------------------------------

    async def get_job(self, job_id: int, *, conn: Any = None) -> Job | None:
        """The job with this id, or None."""
        return await self.queue.get_job(job_id, conn=conn)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | str | None = None,
        task: str | None = None,
        before: int | None = None,
        limit: int = 50,
        conn: Any = None,
    ) -> JobPage:
        """Jobs newest first, filtered by queue, state and task where given, at most
        ``limit`` of them; ``before`` (a page's ``next_cursor``) continues below that id.
        Keyset paging: a page costs the same however deep it is, and jobs enqueued
        meanwhile neither shift nor repeat the pages that follow."""
        if queue is not None:
            validate_queue_name(queue)
        if task is not None:
            validate_task_name(task)
        if before is not None:
            before = validate_job_id(before)
        job_state = None if state is None else _job_state(state)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidJobError(f"limit must be a positive integer, got {limit!r}", field="limit")

        async def op(ex: AsyncExecutor) -> list[Job]:
            # One more than asked: whether there is a next page, without a count.
            return await driver.list_jobs(
                ex, before_id=before, queue=queue, state=job_state, task=task, limit=limit + 1
            )

        jobs = await self._run(op, conn, idempotent=True)
        if len(jobs) <= limit:
            return JobPage(jobs, None)
        return JobPage(jobs[:limit], jobs[limit - 1].id)

    async def enqueue_job(self, spec: JobSpec, *, conn: Any = None) -> EnqueuedJob:
        """Enqueue one job (built with ``queue.build(...)`` or ``task.job(...)``) and
        return it as it stands: a new job as written, in the one round trip of the
        insert; for an idempotency key that a job already holds, that job, read back."""
        spec = check_spec(spec)

        async def op(ex: AsyncExecutor) -> EnqueuedJob:
            result, job = await driver.enqueue_described(ex, spec)
            if job is None:
                job = await driver.get_job(ex, result.id)
            return EnqueuedJob(result.id, result.duplicate, job)

        return await self._run(op, conn, idempotent=spec.idempotency_key is not None)

    async def cancel_job(self, job_id: int, *, conn: Any = None) -> Job:
        """Cancel a queued or running job (see :meth:`Queue.cancel`) and return it as it
        now stands. ``JobStateError`` if it has finished, ``JobNotFoundError`` if there
        is no such job."""
        job_id = validate_job_id(job_id)

        async def op(ex: AsyncExecutor) -> Job:
            await driver.cancel(ex, job_id)
            return _found(await driver.get_job(ex, job_id), job_id)

        return await self._run(op, conn, idempotent=False)

    async def retry_job(self, job_id: int, *, conn: Any = None) -> Job:
        """Queue a failed or cancelled job again now (see :meth:`Queue.retry`) and return
        it as it now stands. ``JobStateError`` for any other state."""
        job_id = validate_job_id(job_id)

        async def op(ex: AsyncExecutor) -> Job:
            await driver.retry(ex, job_id)
            return _found(await driver.get_job(ex, job_id), job_id)

        return await self._run(op, conn, idempotent=False)

    # --- queues -------------------------------------------------------------------------

    async def queue_stats(self, *, conn: Any = None) -> list[QueueStats]:
        """Per queue, by name: jobs in each state, the oldest claimable job's age,
        paused or not."""
        return await self._run(driver.queue_stats, conn, idempotent=True)

    async def pause_queue(self, name: str, *, conn: Any = None) -> None:
        """Workers claim nothing more from the queue (running jobs finish) until
        :meth:`resume_queue`. Pausing a paused queue changes nothing."""
        name = validate_queue_name(name)
        await self._run(lambda ex: driver.pause_queue(ex, name), conn, idempotent=True)

    async def resume_queue(self, name: str, *, conn: Any = None) -> None:
        """Resume a paused queue and wake its workers."""
        name = validate_queue_name(name)
        await self._run(lambda ex: driver.resume_queue(ex, name), conn, idempotent=True)

    async def queue_settings(self, *, conn: Any = None) -> list[QueueSettings]:
        """The queues with settings of their own (today: paused or not)."""
        rows = await self._run(driver.metrics_queue_rows, conn, idempotent=True)
        return [_named(QueueSettings, r) for r in rows]

    # --- figures ------------------------------------------------------------------------

    async def throughput(self, minutes: int, *, conn: Any = None) -> list[Throughput]:
        """Jobs finished per queue in each of the last ``minutes`` minutes, with how many
        failed; minutes with nothing finished have no row. A scan of the jobs table."""
        if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
            raise InvalidJobError(f"minutes must be a positive integer, got {minutes!r}")
        rows = await self._run(
            lambda ex: driver.throughput_rows(ex, minutes), conn, idempotent=True
        )
        return [_named(Throughput, r) for r in rows]

    async def job_counts(
        self, duration_buckets: Sequence[float], *, conn: Any = None
    ) -> list[JobCounts]:
        """Every job counted in one pass over the jobs table (a sequential scan: cache
        the answer), per queue, task and bucket of the last attempt's run time;
        ``duration_buckets`` are the buckets' upper bounds in seconds, ascending."""
        bounds = [round(b * 1_000_000) for b in duration_buckets]
        if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
            raise InvalidJobError("duration_buckets must ascend (to the microsecond)")
        rows = await self._run(
            lambda ex: driver.metrics_job_rows(ex, bounds), conn, idempotent=True
        )
        return [_named(JobCounts, r) for r in rows]

    # --- API keys -----------------------------------------------------------------------

    async def create_api_key(self, name: str, scope: ApiKeyScope, *, conn: Any = None) -> NewApiKey:
        """A new key with this name and scope (``read``, ``enqueue`` or ``admin``): its
        id and the key, which is stored nowhere (only its SHA-256 is).
        ``InvalidApiKeyError`` for a bad name or scope, before anything is written."""
        key, digest = _new_key(name, scope)
        key_id = await self._run(
            lambda ex: driver.create_api_key(ex, name, scope, digest), conn, idempotent=False
        )
        return NewApiKey(key_id, key)

    def create_api_key_sync(self, name: str, scope: ApiKeyScope, *, conn: Any = None) -> NewApiKey:
        """The sync twin of :meth:`create_api_key`."""
        key, digest = _new_key(name, scope)
        key_id = self._run_sync(
            lambda ex: driver_sync.create_api_key(ex, name, scope, digest),
            conn,
            idempotent=False,
        )
        return NewApiKey(key_id, key)

    async def find_api_key(self, key: str, *, conn: Any = None) -> LiveApiKey | None:
        """The live (not revoked) key ``key`` is, or None; marks it used (at most once a
        minute, to spare writes)."""
        digest = hash_api_key(key)
        row = await self._run(lambda ex: driver.find_api_key_row(ex, digest), conn, idempotent=True)
        return None if row is None else _named(LiveApiKey, row)

    async def list_api_keys(self, *, conn: Any = None) -> list[ApiKey]:
        """Every key, revoked ones too, by id."""
        rows = await self._run(driver.api_key_rows, conn, idempotent=True)
        return [_named(ApiKey, r) for r in rows]

    def list_api_keys_sync(self, *, conn: Any = None) -> list[ApiKey]:
        """The sync twin of :meth:`list_api_keys`."""
        rows = self._run_sync(driver_sync.api_key_rows, conn, idempotent=True)
        return [_named(ApiKey, r) for r in rows]

    async def revoke_api_key(self, key_id: int, *, conn: Any = None) -> bool:
        """Revoke a live key; False if there is no live key with this id. A service
        that caches keys honours it within its cache period."""
        key_id = _key_id(key_id)
        # Not idempotent: run again after a lost answer, it would answer False.
        return await self._run(lambda ex: driver.revoke_api_key(ex, key_id), conn, idempotent=False)

    def revoke_api_key_sync(self, key_id: int, *, conn: Any = None) -> bool:
        """The sync twin of :meth:`revoke_api_key`."""
        key_id = _key_id(key_id)
        return self._run_sync(
            lambda ex: driver_sync.revoke_api_key(ex, key_id), conn, idempotent=False
        )


def _found(job: Job | None, job_id: int) -> Job:
    if job is None:  # deleted (pruned) in between
        raise JobNotFoundError(f"there is no job {job_id}")
    return job


def _job_state(state: JobState | str) -> JobState:
    try:
        return JobState(state)
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise InvalidJobError(
            f"state must be one of {names}; got {state!r}", field="state"
        ) from None


def _key_id(key_id: object) -> int:
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 < key_id <= JOB_ID_MAX:
        raise InvalidApiKeyError(f"an API key id is a positive integer, got {key_id!r}")
    return key_id
