"""The admin API's records and the plain logic behind its calls (see :mod:`pgqueue.admin`)."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from pgqueue.errors import InvalidJobError, JobNotFoundError, PgQueueError
from pgqueue.limits import JOB_ID_MAX
from pgqueue.states import JobState

if TYPE_CHECKING:
    from collections.abc import Iterable
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
    window (clock minutes: minute 0 is the current one so far)."""

    queue: str
    minutes_ago: int
    finished: int
    failed: int  # of those finished


class JobCounters(NamedTuple):
    """The counters of one queue and task (see :meth:`Admin.job_counters`): kept as
    jobs move (migration 0019), they only ever grow: deleting or pruning jobs, or
    retrying one by hand, never lowers them. History from before migration 0019 is what
    rows were left then."""

    queue: str
    task: str
    enqueued: int  # jobs inserted
    succeeded: int  # moves into succeeded
    failed: int  # moves into failed (for good)
    cancelled: int  # moves into cancelled
    retried: int  # attempts beyond each job's first that ended (not a snooze's)
    rescued: int  # handed back (or failed) by the rescue after their worker was lost
    # Jobs per run-time bucket (not cumulative), one more than the bounds: the last one
    # is above them all; counted as each job moves into succeeded or failed.
    duration_buckets: tuple[int, ...]
    duration_sum: float  # seconds, over the same jobs


_COUNTER_FIELDS = {
    "enqueued_total": "enqueued",
    "succeeded_total": "succeeded",
    "failed_total": "failed",
    "cancelled_total": "cancelled",
    "retried_total": "retried",
    "rescued_total": "rescued",
}
_BUCKET_PREFIX = "duration_bucket_"


def job_counters_from_rows(rows: Iterable[Any], bounds: int) -> list[JobCounters]:
    """The ``metrics_jobs`` rows (queue, task, metric, n) as JobCounters, by queue and
    task; ``bounds``: how many bucket bounds the histogram has."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        queue, task, metric, n = row["queue"], row["task"], row["metric"], int(row["n"])
        fields = found.setdefault(
            (queue, task),
            dict.fromkeys(_COUNTER_FIELDS.values(), 0)
            | {"buckets": [0] * (bounds + 1), "duration_sum": 0.0},
        )
        if metric in _COUNTER_FIELDS:
            fields[_COUNTER_FIELDS[metric]] = n
        elif metric.startswith(_BUCKET_PREFIX):
            fields["buckets"][int(metric.removeprefix(_BUCKET_PREFIX))] = n
        elif metric == "duration_us_sum":
            fields["duration_sum"] = n / 1_000_000
    return [
        JobCounters(
            queue,
            task,
            enqueued=f["enqueued"],
            succeeded=f["succeeded"],
            failed=f["failed"],
            cancelled=f["cancelled"],
            retried=f["retried"],
            rescued=f["rescued"],
            duration_buckets=tuple(f["buckets"]),
            duration_sum=f["duration_sum"],
        )
        for (queue, task), f in sorted(found.items())
    ]


class ReplicaStatus(NamedTuple):
    """What a server says about itself as a read replica (:meth:`Admin.replica_status`)."""

    in_recovery: bool  # a standby; False: a primary, current by definition (lag 0)
    # 0 when the standby has replayed all the WAL it received, else how long ago the last
    # transaction it replayed committed on the primary; None when it cannot tell.
    lag_seconds: float | None
    receiving: bool  # a WAL receiver runs; False: it cannot know what it misses
    lag_bytes: int  # WAL received but not replayed yet
    replay_paused: bool  # pg_wal_replay_pause() holds its replay


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
