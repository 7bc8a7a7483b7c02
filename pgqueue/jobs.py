"""Jobs as values: building and validating a job before it is written, and reading one
back. Pure functions shared by the sync and async faces; no I/O here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict, TypeVar

from pgqueue.errors import InvalidJobError
from pgqueue.limits import (
    JOB_ID_MAX,
    MAX_JSON_DEPTH,
    MAX_SECONDS,
    MIN_TIMEOUT_SECONDS,
    RUN_AT_MAX,
    RUN_AT_MIN,
)
from pgqueue.states import JobState

if TYPE_CHECKING:
    from collections.abc import Iterable

_T = TypeVar("_T")

# The same patterns as the CHECK constraints on pgqueue.jobs: checked here first so the
# caller gets a clear error instead of a constraint violation.
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TASK_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767  # smallint; higher runs first
MAX_ATTEMPTS_LIMIT = 1000
IDEMPOTENCY_KEY_MAX = 255
CONCURRENCY_KEY_MAX = 255
UNIQUE_KEY_MAX = 255
SEQUENCE_KEY_MAX = 255
# What a job of a sequence that fails for good does to the jobs behind it: holds them
# (until it is retried and succeeds, or deleted) or lets them go on.
SequenceOnFailure = Literal["hold", "continue"]
SEQUENCE_ON_FAILURE: tuple[SequenceOnFailure, ...] = ("hold", "continue")
# How many hex digits of the SHA-256 of (task, args) a default unique key keeps: 192
# bits, and a task name of 200 characters plus the digest still fits UNIQUE_KEY_MAX.
_ARGS_DIGEST_CHARS = 48
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


# One encoder for every job: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def encode_json(value: Any, what: str) -> str:
    """JSON text PostgreSQL's jsonb accepts and Python reads back, or InvalidJobError
    saying why not: serialisable, no NUL, no lone surrogate, at most MAX_JSON_DEPTH deep."""
    try:
        text = _JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"{what} must be JSON-serialisable: {exc}", field=what) from exc
    except RecursionError as exc:
        raise InvalidJobError(
            f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", field=what
        ) from exc
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidJobError(
            f"{what} must not contain NUL characters (jsonb refuses them)", field=what
        )
    # Both checks below walk the value, so they run only when the cheap test on the text
    # says they might find something (a surrogate escape; enough brackets to be deep).
    if "\\ud" in text and not _utf8_encodable(_JSON_UTF8.encode(value)):
        raise InvalidJobError(
            f"{what} must not contain lone surrogates (text that is not valid Unicode)", field=what
        )
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise InvalidJobError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", field=what)
    return text


# \u0000 in JSON text is a NUL unless its backslash is itself escaped (a literal
# backslash followed by "u0000" in the original string).
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_JSON_UTF8 = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON containers nest more than ``limit`` levels (iterative: a recursive
    walk would itself hit Python's recursion limit on the values it must refuse)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def validate_text(value: object, what: str, max_length: int) -> str:
    """A string PostgreSQL's text type stores: 1 to ``max_length`` characters, no NUL,
    valid Unicode."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= max_length
        or "\x00" in value
        or not _utf8_encodable(value)
    ):
        raise InvalidJobError(
            f"{what} must be a string of 1-{max_length} characters without NUL or lone "
            f"surrogates, got {_short(value)}",
            field=what,
        )
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def validate_job_id(value: object) -> int:
    """A job id: an integer from 1 to 2**63 - 1 (PostgreSQL's bigint)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= JOB_ID_MAX:
        raise InvalidJobError(
            f"job id must be an integer from 1 to {JOB_ID_MAX}, got {_short(value)}", field="id"
        )
    return value


def validate_seconds(value: object, what: str, *, allow_zero: bool) -> float:
    """A number of seconds (or a timedelta): finite, at least MIN_TIMEOUT_SECONDS (or
    zero) and at most MAX_SECONDS."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (value >= 0 if allow_zero else value >= MIN_TIMEOUT_SECONDS)
        or value > MAX_SECONDS
    ):
        low = "0" if allow_zero else f"{MIN_TIMEOUT_SECONDS:g}"
        raise InvalidJobError(
            f"{what} must be a number of seconds from {low} to {MAX_SECONDS}, got {_short(value)}",
            field=what,
        )
    return float(value)


def validate_run_at(value: object) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidJobError(
            f"run_at must be a timezone-aware datetime, got {_short(value)}", field="run_at"
        )
    if not RUN_AT_MIN <= value <= RUN_AT_MAX:
        raise InvalidJobError(
            f"run_at must be from {RUN_AT_MIN.isoformat()} to {RUN_AT_MAX.isoformat()}, "
            f"got {value.isoformat()}",
            field="run_at",
        )
    return value


@cache
def _name_ok(pattern: re.Pattern[str], name: str) -> bool:
    # Names repeat (a few queues, a few tasks, many jobs): match each one once.
    return pattern.fullmatch(name) is not None


def validate_queue_name(queue: object) -> str:
    if not isinstance(queue, str) or len(queue) > 64 or not _name_ok(QUEUE_NAME_RE, queue):
        raise InvalidJobError(
            f"invalid queue name {queue!r}: 1-64 characters from A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit",
            field="queue",
        )
    return queue


def validate_task_name(task: object) -> str:
    if not isinstance(task, str) or len(task) > 200 or not _name_ok(TASK_NAME_RE, task):
        raise InvalidJobError(
            f"invalid task name {task!r}: 1-200 characters from A-Z a-z 0-9 _ . : -, "
            "starting with a letter or underscore",
            field="task",
        )
    return task


def _validate_int(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(
            f"{what} must be an integer from {low} to {high}, got {value!r}", field=what
        )
    return value


def build_job(
    task: str,
    args: dict[str, Any] | None = None,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    run_at: datetime | None = None,
    delay: float | timedelta | None = None,
    idempotency_key: str | None = None,
    timeout: float | timedelta | None = None,
    concurrency_key: str | None = None,
    unique_key: str | None = None,
    unique_for: float | timedelta | None = None,
    debounce: float | timedelta | None = None,
    sequence_key: str | None = None,
    sequence_on_failure: SequenceOnFailure | None = None,
) -> JobSpec:
    """Check every field of a job and return it ready to insert: the one place where a
    job's fields are validated, so that the library, the API and the CLI refuse the same
    things with the same InvalidJobError, naming the field, before anything is written."""
    validate_task_name(task)
    validate_queue_name(queue)
    if args is None:
        args = {}
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise InvalidJobError(
            "args must be a dict with string keys (the task's keyword arguments)", field="args"
        )
    args_json = encode_json(args, "args")
    _validate_int(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
    _validate_int(max_attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
    if run_at is not None and delay is not None:
        raise InvalidJobError("give run_at or delay, not both", field="run_at")
    if run_at is not None:
        validate_run_at(run_at)
    delay_seconds = 0.0 if delay is None else validate_seconds(delay, "delay", allow_zero=True)
    timeout_seconds = None if timeout is None else validate_timeout(timeout, "timeout")
    if idempotency_key is not None:
        validate_text(idempotency_key, "idempotency_key", IDEMPOTENCY_KEY_MAX)
    if concurrency_key is not None:
        validate_text(concurrency_key, "concurrency_key", CONCURRENCY_KEY_MAX)
    unique_for_seconds = (
        None if unique_for is None else validate_seconds(unique_for, "unique_for", allow_zero=False)
    )
    debounce_seconds = (
        None if debounce is None else validate_seconds(debounce, "debounce", allow_zero=True)
    )
    _check_one_mode(
        idempotency_key=idempotency_key,
        unique_for=unique_for_seconds,
        debounce=debounce_seconds,
        sequence_key=sequence_key,
    )
    unique_key = _unique_key(
        task,
        args_json,
        unique_key=unique_key,
        unique_for=unique_for_seconds,
        debounce=debounce_seconds,
    )
    sequence_on_failure = _sequence_on_failure(sequence_key, sequence_on_failure)
    return CheckedJobSpec(
        task=task,
        args_json=args_json,
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        run_at=run_at,
        delay=delay_seconds,
        idempotency_key=idempotency_key,
        timeout=timeout_seconds,
        concurrency_key=concurrency_key,
        unique_key=unique_key,
        unique_for=unique_for_seconds,
        debounce=debounce_seconds,
        sequence_key=sequence_key,
        sequence_on_failure=sequence_on_failure,
    )


def _check_one_mode(**modes: object) -> None:
    """At most one of the options each enforced by its own index and statement."""
    given = [name for name, value in modes.items() if value is not None]
    if len(given) > 1:
        raise InvalidJobError(
            f"give one of {', '.join(modes)}, not {' and '.join(given)}", field=given[1]
        )


def _sequence_on_failure(sequence_key: str | None, on_failure: object) -> SequenceOnFailure | None:
    if sequence_key is None:
        if on_failure is not None:
            raise InvalidJobError(
                "sequence_on_failure needs a sequence_key", field="sequence_on_failure"
            )
        return None
    validate_text(sequence_key, "sequence_key", SEQUENCE_KEY_MAX)
    if on_failure is None:
        return "hold"
    for choice in SEQUENCE_ON_FAILURE:
        if on_failure == choice:
            return choice
    raise InvalidJobError(
        f"sequence_on_failure must be 'hold' or 'continue', got {_short(on_failure)}",
        field="sequence_on_failure",
    )


def _unique_key(
    task: str,
    args_json: str,
    *,
    unique_key: str | None,
    unique_for: float | None,
    debounce: float | None,
) -> str | None:
    """The job's unique key, checked: the one given, else its mode's default (see
    pgqueue/sql/uniqueness.sql); None when the job has neither unique_for nor debounce."""
    if unique_key is not None:
        validate_text(unique_key, "unique_key", UNIQUE_KEY_MAX)
        if unique_for is None and debounce is None:
            raise InvalidJobError(
                "unique_key is the key of unique_for or debounce: give one of them too",
                field="unique_key",
            )
        return unique_key
    if unique_for is not None:
        return default_unique_key(task, args_json)
    if debounce is not None:
        return task  # a debounced job's args change: the task alone is the default key
    return None


def default_unique_key(task: str, args_json: str) -> str:
    """The key of a unique window given without unique_key: the task and a digest of its
    arguments in canonical JSON (keys sorted), so that the same call gives the same key
    whatever the order its keyword arguments were written in."""
    canonical = json.dumps(json.loads(args_json), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{task}\x00{canonical}".encode()).hexdigest()
    return f"{task}:{digest[:_ARGS_DIGEST_CHARS]}"


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


def check_option_names(options: JobOptions) -> None:
    """TypeError for a misspelt option, as Python raises for a bad keyword argument (a
    ``**options`` catches any name, and an unknown one must not pass unnoticed)."""
    unknown = options.keys() - JOB_OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unexpected job option(s) {', '.join(sorted(unknown))}; the options are "
            f"{', '.join(sorted(JOB_OPTION_NAMES))}"
        )


def has_options(options: JobOptions) -> bool:
    """Whether any option is set (None means "the default", as if left out)."""
    return any(v is not None for v in options.values())


def build_with_options(
    task: str,
    args: dict[str, Any] | None,
    options: JobOptions,
    *,
    queue: str,
    priority: int,
    max_attempts: int,
) -> JobSpec:
    """:func:`build_job` with ``options`` over a task's defaults."""
    check_option_names(options)
    # None takes the default; "" is refused by build_job like any bad name.
    return build_job(
        task,
        args,
        queue=_or_default(options.get("queue"), queue),
        priority=_or_default(options.get("priority"), priority),
        max_attempts=_or_default(options.get("max_attempts"), max_attempts),
        run_at=options.get("run_at"),
        delay=options.get("delay"),
        idempotency_key=options.get("idempotency_key"),
        timeout=options.get("timeout"),
        concurrency_key=options.get("concurrency_key"),
        unique_key=options.get("unique_key"),
        unique_for=options.get("unique_for"),
        debounce=options.get("debounce"),
        sequence_key=options.get("sequence_key"),
        sequence_on_failure=options.get("sequence_on_failure"),
    )


def _or_default(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def check_spec(spec: JobSpec) -> JobSpec:
    """Check a JobSpec made without :func:`build_job` (its constructor checks nothing)
    against the same rules, so that no path writes what build_job would refuse."""
    if type(spec) is CheckedJobSpec:
        return spec
    if not isinstance(spec, JobSpec):
        raise InvalidJobError(
            f"a {type(spec).__name__} is not a JobSpec: build jobs with task.job(...) or "
            "queue.build(...)"
        )
    if not isinstance(spec.args_json, str):
        raise InvalidJobError("args_json must be JSON text", field="args")
    try:
        args = json.loads(spec.args_json)
    except (ValueError, RecursionError) as exc:
        raise InvalidJobError(f"args_json is not valid JSON: {exc}", field="args") from exc
    return build_job(
        spec.task,
        args,
        queue=spec.queue,
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        run_at=spec.run_at,
        delay=spec.delay if spec.run_at is None or spec.delay else None,
        idempotency_key=spec.idempotency_key,
        timeout=spec.timeout,
        concurrency_key=spec.concurrency_key,
        unique_key=spec.unique_key,
        unique_for=spec.unique_for,
        debounce=spec.debounce,
        sequence_key=spec.sequence_key,
        sequence_on_failure=spec.sequence_on_failure,
    )


def validate_timeout(value: object, what: str) -> float:
    """A timeout in seconds: a finite number above zero, at most MAX_SECONDS."""
    return validate_seconds(value, what, allow_zero=False)


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


def decode_json(text: str | None) -> Any:
    """A JSON column as read back. Whatever a row holds must stay readable (a job with
    args nested deeper than Python's decoder goes, written from psql, must not break
    every listing): such a value reads as a dict saying so instead of failing."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        return {"pgqueue_undecodable": f"JSON nested too deeply to decode ({len(text)} characters)"}


def job_from_row(row: Any) -> Job:
    """A ``get_job`` / ``list_jobs`` row (either driver's) as a Job, by column name."""
    args = decode_json(row["args"])
    errors = decode_json(row["errors"])
    return Job(
        id=row["id"],
        queue=row["queue"],
        task=row["task"],
        args=args if isinstance(args, dict) else {"pgqueue_undecodable": args},
        state=JobState(row["state"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        run_at=row["run_at"],
        idempotency_key=row["idempotency_key"],
        result=decode_json(row["result"]),
        errors=errors if isinstance(errors, list) else [errors],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        timeout=row["timeout"],
        progress=decode_json(row["progress"]),
        concurrency_key=row["concurrency_key"],
        unique_key=row["unique_key"],
        unique_for=row["unique_for"],
        debounce=row["debounce"],
        sequence_key=row["sequence_key"],
        sequence_on_failure=row["sequence_on_failure"],
    )


def new_job(spec: JobSpec, row: Any) -> Job:
    """The job an enqueue of ``spec`` has just written, as it stands: queued, never
    tried; ``row`` is the enqueue's, with the values the database decided (``id``,
    ``created_at``, ``run_at``)."""
    return Job(
        id=row["id"],
        queue=spec.queue,
        task=spec.task,
        args=json.loads(spec.args_json),
        # A job of a sequence waits blocked behind an unfinished one.
        state=JobState.QUEUED if spec.sequence_key is None else JobState(row["state"]),
        priority=spec.priority,
        attempts=0,
        max_attempts=spec.max_attempts,
        run_at=row["run_at"],
        idempotency_key=spec.idempotency_key,
        result=None,
        errors=[],
        created_at=row["created_at"],
        started_at=None,
        finished_at=None,
        timeout=spec.timeout,
        concurrency_key=spec.concurrency_key,
        unique_key=spec.unique_key,
        unique_for=spec.unique_for,
        debounce=spec.debounce,
        sequence_key=spec.sequence_key,
        sequence_on_failure=spec.sequence_on_failure,
    )


def claimed_from_row(row: Any) -> ClaimedJob:
    """A ``claim_jobs`` row as a ClaimedJob."""
    return ClaimedJob(
        id=row["id"],
        queue=row["queue"],
        task=row["task"],
        args=decode_json(row["args"]),
        priority=row["priority"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
    )


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


_QUEUE_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(QueueStats))


@dataclass(frozen=True, slots=True)
class SequenceStatus:
    """One sequence with unfinished jobs (a row of ``pgqueue.sequence_status``)."""

    sequence_key: str
    unfinished: int  # blocked, queued, running, or failed and holding the rest
    head_job_id: int | None  # the job the rest wait for
    head_state: JobState | None
    head_queue: str | None


def sequence_status_from_row(row: Any) -> SequenceStatus:
    """A ``sequence_status`` row as SequenceStatus, by column name."""
    state = row["head_state"]
    return SequenceStatus(
        sequence_key=row["sequence_key"],
        unfinished=row["unfinished"],
        head_job_id=row["head_job_id"],
        head_state=None if state is None else JobState(state),
        head_queue=row["head_queue"],
    )


def queue_stats_from_row(row: Any) -> QueueStats:
    """A ``queue_stats`` row as QueueStats, by column name."""
    return QueueStats(**{name: row[name] for name in _QUEUE_STATS_FIELDS})


def all_keyed(specs: list[JobSpec]) -> bool:
    # Enqueueing again after a connection lost mid-statement is safe only when every
    # job has an idempotency key: a job that did get in is then found, not doubled.
    return all(spec.idempotency_key is not None for spec in specs)


def check_specs(jobs: Iterable[JobSpec]) -> list[JobSpec]:
    """The batch as a list of checked jobs; a bad item (or one that fails as it is built,
    when ``jobs`` is a generator) raises InvalidJobError naming its index."""
    specs: list[JobSpec] = []
    try:
        for spec in jobs:
            specs.append(check_spec(spec))  # noqa: PERF401 - len(specs) names a bad item
    except InvalidJobError as exc:
        index = len(specs)  # the item being built or checked when it failed
        raise InvalidJobError(f"item {index}: {exc}", field=exc.field, index=index) from exc
    return specs
