"""pgqueue: a PostgreSQL-native job queue.

Jobs are rows in ``pgqueue.jobs``; workers claim them with ``FOR UPDATE SKIP LOCKED`` and
sleep on LISTEN between jobs. See the README for the tour.

``pgqueue.__version__`` is the installed distribution's version (``pgqueue-jobs``).
"""

from pathlib import Path as _Path

from pgqueue._checkout import install_service_finder as _install_service_finder
from pgqueue._version import __version__ as __version__
from pgqueue.admin import Admin
from pgqueue.app import Queue
from pgqueue.context import RunningJob, current_job
from pgqueue.errors import (
    DatabaseUnavailableError,
    IdempotencyConflictError,
    InlineModeError,
    InvalidJobError,
    InvalidLimitError,
    JobFailedError,
    JobNotFoundError,
    JobStateError,
    JobTimeoutError,
    OutcomeUnknownError,
    PermanentError,
    PgQueueError,
    PoolTimeoutError,
    ScheduleNotFoundError,
    SchemaNotReadyError,
    Snooze,
    UnknownTaskError,
    UnsupportedConnectionError,
    WaitTimeoutError,
)
from pgqueue.flow import KeyLimit, LimitStatus, QueueLimit, Rate
from pgqueue.hooks import FailedJob
from pgqueue.jobs import EnqueueResult, Job, JobOptions, JobSpec, QueueStats, SequenceStatus
from pgqueue.retention import Retention
from pgqueue.retry import RetryPolicy
from pgqueue.scheduling import InvalidScheduleError, Schedule
from pgqueue.states import JobState
from pgqueue.steps import InvalidStepError, JobStep, StepResultError
from pgqueue.tasks import Task
from pgqueue.worker import Worker
from pgqueue.workflows import ParentNotFoundError, Workflow, chain, chord, group

# In a source checkout (tests, editable installs), pgqueue.service is the top-level
# service/; an installed wheel carries it inside the package (see pgqueue/_checkout.py).
_install_service_finder(_Path(__file__).resolve().parent)

__all__ = [
    "Admin",
    "DatabaseUnavailableError",
    "EnqueueResult",
    "FailedJob",
    "IdempotencyConflictError",
    "InlineModeError",
    "InvalidJobError",
    "InvalidLimitError",
    "InvalidScheduleError",
    "InvalidStepError",
    "Job",
    "JobFailedError",
    "JobNotFoundError",
    "JobOptions",
    "JobSpec",
    "JobState",
    "JobStateError",
    "JobStep",
    "JobTimeoutError",
    "KeyLimit",
    "LimitStatus",
    "OutcomeUnknownError",
    "ParentNotFoundError",
    "PermanentError",
    "PgQueueError",
    "PoolTimeoutError",
    "Queue",
    "QueueLimit",
    "QueueStats",
    "Rate",
    "Retention",
    "RetryPolicy",
    "RunningJob",
    "Schedule",
    "ScheduleNotFoundError",
    "SchemaNotReadyError",
    "SequenceStatus",
    "Snooze",
    "StepResultError",
    "Task",
    "UnknownTaskError",
    "UnsupportedConnectionError",
    "WaitTimeoutError",
    "Worker",
    "Workflow",
    "chain",
    "chord",
    "current_job",
    "group",
]
