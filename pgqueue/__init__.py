"""pgqueue: a PostgreSQL-native job queue.

Jobs are rows in ``pgqueue.jobs``; workers claim them with ``FOR UPDATE SKIP LOCKED`` and
sleep on LISTEN between jobs. See the README for the tour.
"""

from pgqueue.app import Queue
from pgqueue.context import RunningJob, current_job
from pgqueue.errors import (
    DatabaseUnavailableError,
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    OutcomeUnknownError,
    PermanentError,
    PgQueueError,
    PoolTimeoutError,
    SchemaNotReadyError,
    Snooze,
    UnknownTaskError,
    UnsupportedConnectionError,
)
from pgqueue.jobs import EnqueueResult, Job, JobSpec, QueueStats
from pgqueue.retention import Retention
from pgqueue.retry import RetryPolicy
from pgqueue.states import JobState
from pgqueue.tasks import Task
from pgqueue.worker import Worker

__all__ = [
    "DatabaseUnavailableError",
    "EnqueueResult",
    "IdempotencyConflictError",
    "InvalidJobError",
    "Job",
    "JobNotFoundError",
    "JobSpec",
    "JobState",
    "JobStateError",
    "JobTimeoutError",
    "OutcomeUnknownError",
    "PermanentError",
    "PgQueueError",
    "PoolTimeoutError",
    "Queue",
    "QueueStats",
    "Retention",
    "RetryPolicy",
    "RunningJob",
    "SchemaNotReadyError",
    "Snooze",
    "Task",
    "UnknownTaskError",
    "UnsupportedConnectionError",
    "Worker",
    "current_job",
]
