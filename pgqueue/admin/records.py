"""The admin API's records and the plain logic behind its calls (see :mod:`pgqueue.admin`)."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from pgqueue.errors import InvalidJobError, JobNotFoundError, PgQueueError
from pgqueue.limits import JOB_ID_MAX
from pgqueue.states import JobState

if TYPE_CHECKING:
    from datetime import datetime

    from pgqueue.jobs import Job
    from pgqueue.workflows import WorkflowStatus

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


def new_api_key(name: str, scope: str) -> tuple[str, bytes]:
    validate_api_key_request(name, scope)
    # 256 random bits.
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_api_key(key)


def named_record(record: type[Any], row: Any) -> Any:
    # By column name, so that a column added to (or moved in) a statement changes nothing.
    return record(**{field: row[field] for field in record._fields})


def found_job(job: Job | None, job_id: int) -> Job:
    if job is None:  # deleted (pruned) in between
        raise JobNotFoundError(f"there is no job {job_id}")
    return job


def found_workflow(workflow: WorkflowStatus | None, workflow_id: int) -> WorkflowStatus:
    if workflow is None:  # its jobs all deleted in between
        raise LookupError(f"there is no workflow {workflow_id}")
    return workflow


def job_state_of(state: JobState | str) -> JobState:
    try:
        return JobState(state)
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise InvalidJobError(
            f"state must be one of {names}; got {state!r}", field="state"
        ) from None


def api_key_id(key_id: object) -> int:
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 < key_id <= JOB_ID_MAX:
        raise InvalidApiKeyError(f"an API key id is a positive integer, got {key_id!r}")
    return key_id
