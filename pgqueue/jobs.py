"""A job's one definition: :class:`JobSpec` (what an enqueue writes, in the order of
:data:`INSERT_FIELDS`), :class:`JobOptions` (the options callers give), :class:`Job` (a
row read back) and the shapes of the bulk paths. Values only; building and checking
jobs is :mod:`pgqueue.validation`, reading rows :mod:`pgqueue.rows`."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from pgqueue.states import JobState

# What a job of a sequence that fails for good does to the jobs behind it: holds them
# (until it is retried and succeeds, or deleted) or lets them go on.
SequenceOnFailure = Literal["hold", "continue"]
SEQUENCE_ON_FAILURE: tuple[SequenceOnFailure, ...] = ("hold", "continue")
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3


class JobSpec(NamedTuple):
    """A validated job, ready to insert. Build one with :func:`build_job` (or a task's
    ``job()``), which checks every field; the constructor itself checks nothing.

    A NamedTuple rather than a frozen dataclass: just as immutable, and ten times
    cheaper to create, which shows when a bulk enqueue builds a hundred thousand."""

    task: str
    args_json: str
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    run_at: datetime | None = None
    delay: float = 0.0
    idempotency_key: str | None = None
    timeout: float | None = None
    # Jobs sharing a concurrency key share its concurrency and rate limits and take
    # turns with other keys (see pgqueue.limits' flow control).
    concurrency_key: str | None = None
    # The key of a unique window or of debouncing (see pgqueue/sql/uniqueness.sql): set,
    # by build_job when not given, exactly when unique_for or debounce is.
    unique_key: str | None = None
    # Seconds during which another enqueue of unique_key returns this job.
    unique_for: float | None = None
    # Seconds a newer enqueue of unique_key pushes this job back, while it waits.
    debounce: float | None = None
    # Jobs sharing a sequence key run one at a time, in enqueue order (see
    # pgqueue/sql/sequences.sql); set by build_job exactly when sequence_key is.
    sequence_key: str | None = None
    sequence_on_failure: SequenceOnFailure | None = None

    @property
    def enqueue_statement(self) -> str:
        """The name of the statement that writes this job alone (its key decides)."""
        if self.sequence_key is not None:
            return "enqueue_sequenced"
        if self.debounce is not None:
            return "enqueue_debounced"
        if self.unique_for is not None:
            return "enqueue_unique"
        return "enqueue" if self.idempotency_key is None else "enqueue_idempotent"

    @property
    def copyable(self) -> bool:
        """True when every field but the ones COPY writes has its default."""
        return self[_COPIED:] == _COPY_DEFAULTS

    def insert_params(self) -> tuple[Any, ...]:
        """Parameters of :attr:`enqueue_statement`: a prefix of INSERT_FIELDS' values
        (``enqueue`` takes none of the keys, ``enqueue_idempotent`` the idempotency key,
        ``enqueue_unique`` and ``enqueue_debounced`` the unique ones too, and
        ``enqueue_sequenced`` all of them)."""
        params: tuple[Any, ...] = _insert_values(self)
        if self.sequence_key is not None:
            return params
        if self.unique_key is not None:
            return params[:_UNIQUE]
        return params[:_BULK] if self.idempotency_key is not None else params[: _BULK - 1]


# The one list of what an enqueue writes, in the order of the parameters of the enqueue
# statements ($1, $2, ...: see JobSpec.insert_params for which prefix each takes) and of
# enqueue_many's arrays (after the ids; up to idempotency_key, see _BULK). Every JobSpec
# field is in it: a new job option is a JobSpec field, its place here, its column in
# those statements and a migration (tests/test_job_definition.py fails until every path
# carries it).
INSERT_FIELDS: tuple[str, ...] = (
    "queue",
    "task",
    "args_json",
    "priority",
    "max_attempts",
    "run_at",
    "delay",
    "timeout",
    "concurrency_key",
    "idempotency_key",
    "unique_key",
    "unique_for",
    "debounce",
    "sequence_key",
    "sequence_on_failure",
)
# enqueue_many writes the fields up to idempotency_key: a job with a unique or sequence
# key needs its own statement (pgqueue/sql/uniqueness.sql, sequences.sql), which a bulk
# enqueue runs per job.
_BULK = INSERT_FIELDS.index("idempotency_key") + 1
_UNIQUE = INSERT_FIELDS.index("debounce") + 1  # the unique statements' parameters
# The fields the bulk fast path's COPY writes (after the ids, in copy_jobs' column
# order): JobSpec's leading fields, so that a job's COPY row is a slice of it. Every
# later field must be at its default for a job to go by COPY.
COPY_FIELDS: tuple[str, ...] = ("task", "args_json", "queue", "priority", "max_attempts")
_COPIED = len(COPY_FIELDS)
if JobSpec._fields[:_COPIED] != COPY_FIELDS or set(INSERT_FIELDS) != set(JobSpec._fields):
    raise AssertionError("JobSpec, INSERT_FIELDS and COPY_FIELDS disagree")
_COPY_DEFAULTS = tuple(JobSpec._field_defaults[f] for f in JobSpec._fields[_COPIED:])
_insert_values = operator.attrgetter(*INSERT_FIELDS)
_field_values = [operator.attrgetter(field) for field in INSERT_FIELDS[:_BULK]]


class CheckedJobSpec(JobSpec):
    """A JobSpec that :func:`build_job` made, and so checked: enqueueing it checks
    nothing again (a JobSpec made by hand is checked at enqueue, see check_spec).
    ``_replace`` gives a plain JobSpec, which is checked again when enqueued."""

    __slots__ = ()

    def _replace(self, /, **changes: Any) -> JobSpec:  # type: ignore[override]
        return JobSpec(*self)._replace(**changes)


class EnqueueResult(NamedTuple):
    """What an enqueue did: the job's id, and whether an existing job holding the same
    idempotency key was returned instead of a new row being written (a NamedTuple, for
    the same reason as JobSpec)."""

    id: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored in ``pgqueue.jobs``."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    idempotency_key: str | None
    result: Any
    errors: list[dict[str, Any]]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timeout: float | None = None
    progress: Any = None  # what the running attempt last reported, if anything
    concurrency_key: str | None = None
    unique_key: str | None = None
    unique_for: float | None = None  # seconds
    debounce: float | None = None  # seconds
    sequence_key: str | None = None
    sequence_on_failure: SequenceOnFailure | None = None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker has claimed: what it needs to run it."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    timeout: float | None = None  # this job's own; the task's applies when None


class JobOptions(TypedDict, total=False):
    """A job's options, as :meth:`Queue.enqueue`, :meth:`Queue.build` and
    :meth:`Task.with_options` take them: the one declaration of them in the library
    (the HTTP API's ``JobIn`` names the same ones, pinned by a test). An option left out,
    or None, takes the default: the task's queue, priority and attempts, else none."""

    queue: str | None
    priority: int | None
    max_attempts: int | None
    run_at: datetime | None
    delay: float | timedelta | None
    idempotency_key: str | None
    timeout: float | timedelta | None
    concurrency_key: str | None
    unique_key: str | None
    unique_for: float | timedelta | None
    debounce: float | timedelta | None
    sequence_key: str | None
    sequence_on_failure: SequenceOnFailure | None


JOB_OPTION_NAMES = frozenset(JobOptions.__annotations__)


def bulk_params(ids: list[int], specs: list[JobSpec]) -> tuple[list[Any], ...]:
    """Arrays for the ``enqueue_many`` statement: the ids, then one per INSERT_FIELDS."""
    return (ids, *[list(map(values, specs)) for values in _field_values])


def copy_records(ids: list[int], specs: list[JobSpec]) -> list[tuple[Any, ...]]:
    """Rows for the ``copy_jobs`` statement: the id, then COPY_FIELDS."""
    return [(job_id, *spec[:_COPIED]) for job_id, spec in zip(ids, specs, strict=True)]


@dataclass(slots=True)
class BulkPlan:
    """Bookkeeping of one bulk enqueue: which input rows still need a job id.

    Rows that repeat an idempotency key already seen earlier in the same batch are
    folded onto the first row with that key, so a batch never conflicts with itself.
    """

    specs: list[JobSpec]
    results: list[EnqueueResult | None]
    first_with_key: dict[str, int]

    @classmethod
    def for_specs(cls, specs: list[JobSpec]) -> BulkPlan:
        first: dict[str, int] = {}
        for index, spec in enumerate(specs):
            if spec.idempotency_key is not None:
                first.setdefault(spec.idempotency_key, index)
        return cls(specs=specs, results=[None] * len(specs), first_with_key=first)

    def solo_rows(self) -> list[int]:
        """Input rows with a unique or sequence key, which the bulk statement cannot
        write: each goes by its own statement."""
        return [
            i
            for i, spec in enumerate(self.specs)
            if spec.unique_key is not None or spec.sequence_key is not None
        ]

    def pending(self) -> list[int]:
        """Input rows still to insert (the first row of each key, and keyless rows)."""
        return [
            i
            for i, spec in enumerate(self.specs)
            if self.results[i] is None
            and (spec.idempotency_key is None or self.first_with_key[spec.idempotency_key] == i)
        ]

    def record_insert(self, rows: list[int], ids: list[int], inserted: set[int]) -> list[str]:
        """Note the rows the insert wrote; return the keys whose holder must be looked up."""
        missing: list[str] = []
        for row, job_id in zip(rows, ids, strict=True):
            if job_id in inserted:
                self.results[row] = EnqueueResult(job_id, duplicate=False)
            else:
                key = self.specs[row].idempotency_key
                if key is None:  # only a keyed row can be skipped by ON CONFLICT
                    raise AssertionError(f"keyless job {job_id} was not inserted")
                missing.append(key)
        return missing

    def record_existing(self, holders: dict[str, int]) -> None:
        for key, job_id in holders.items():
            row = self.first_with_key[key]
            if self.results[row] is None:
                self.results[row] = EnqueueResult(job_id, duplicate=True)

    def finish(self) -> list[EnqueueResult]:
        """Results in input order; repeated keys share their first row's job."""
        out: list[EnqueueResult] = []
        for i, spec in enumerate(self.specs):
            result = self.results[i]
            if result is None and spec.idempotency_key is not None:
                first = self.results[self.first_with_key[spec.idempotency_key]]
                if first is not None:
                    result = EnqueueResult(first.id, duplicate=True)
            if result is None:
                raise AssertionError(f"bulk enqueue left row {i} without a job")
            out.append(result)
        return out


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue's row of ``pgqueue.queue_stats``."""

    queue: str
    queued: int
    claimable: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_claimable_age: float | None  # seconds
    paused: bool


@dataclass(frozen=True, slots=True)
class SequenceStatus:
    """One sequence with unfinished jobs (a row of ``pgqueue.sequence_status``)."""

    sequence_key: str
    unfinished: int  # blocked, queued, running, or failed and holding the rest
    head_job_id: int | None  # the job the rest wait for
    head_state: JobState | None
    head_queue: str | None
