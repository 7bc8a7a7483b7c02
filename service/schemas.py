"""The API's bodies, as msgspec structs: Litestar validates requests against them and
publishes them in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - msgspec needs it at runtime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from pgqueue.jobs import Job, QueueStats


class JobIn(msgspec.Struct, forbid_unknown_fields=True):
    """A job to enqueue. Options left out take the defaults (queue ``default``,
    priority 0, three attempts, run now)."""

    task: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay_seconds: float | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    timeout_seconds: float | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    jobs: list[JobIn]


class JobOut(msgspec.Struct):
    id: int
    task: str
    queue: str
    state: str
    attempts: int
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    idempotency_key: str | None
    timeout_seconds: float | None
    args: dict[str, Any]
    result: Any
    errors: list[dict[str, Any]]
    progress: Any = None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            task=job.task,
            queue=job.queue,
            state=job.state.value,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            priority=job.priority,
            run_at=job.run_at,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            idempotency_key=job.idempotency_key,
            timeout_seconds=job.timeout,
            args=job.args,
            result=job.result,
            errors=job.errors,
            progress=job.progress,
        )


class EnqueuedBatch(msgspec.Struct):
    """The batch's jobs in input order; ``duplicate`` marks a job that already held the
    item's idempotency key."""

    jobs: list[BatchItemOut]


class BatchItemOut(msgspec.Struct):
    id: int
    duplicate: bool


class JobPage(msgspec.Struct):
    """Newest first; pass ``next_cursor`` as ``cursor`` for the next page (null: none)."""

    jobs: list[JobOut]
    next_cursor: str | None


class QueueOut(msgspec.Struct):
    name: str
    paused: bool
    queued: int
    claimable: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_claimable_age_seconds: float | None

    @classmethod
    def of(cls, stats: QueueStats) -> QueueOut:
        return cls(
            name=stats.queue,
            paused=stats.paused,
            queued=stats.queued,
            claimable=stats.claimable,
            running=stats.running,
            succeeded=stats.succeeded,
            failed=stats.failed,
            cancelled=stats.cancelled,
            oldest_claimable_age_seconds=stats.oldest_claimable_age,
        )


class QueueList(msgspec.Struct):
    queues: list[QueueOut]


class Problem(msgspec.Struct):
    """An error (RFC 9457 problem details, ``application/problem+json``): ``detail``
    says what was wrong in this case. Some errors add fields: ``errors`` (what did not
    decode), ``index`` (the failing item of a batch), ``job_id`` (the job holding an
    idempotency key)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None
    index: int | None = None
    job_id: int | None = None
