"""Building and checking jobs before anything is written: the one place where a
job's fields are validated (:func:`build_job`), so that the library, the API and the
CLI refuse the same things with the same InvalidJobError. Pure functions shared by the
sync and async faces; no I/O here."""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

from pgqueue.errors import InvalidJobError
from pgqueue.limits import (
    JOB_ID_MAX,
    MAX_JSON_DEPTH,
    MAX_SECONDS,
    MIN_TIMEOUT_SECONDS,
    RUN_AT_MAX,
    RUN_AT_MIN,
)

if TYPE_CHECKING:
    from collections.abc import Iterable
from pgqueue.jobs import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    JOB_OPTION_NAMES,
    SEQUENCE_ON_FAILURE,
    CheckedJobSpec,
    JobOptions,
    JobSpec,
    SequenceOnFailure,
)
from pgqueue.limits import (
    CONCURRENCY_KEY_MAX,
    IDEMPOTENCY_KEY_MAX,
    MAX_ATTEMPTS_LIMIT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    QUEUE_NAME_RE,
    SEQUENCE_KEY_MAX,
    TASK_NAME_RE,
    UNIQUE_KEY_MAX,
)

_T = TypeVar("_T")
# How many hex digits of the SHA-256 of (task, args) a default unique key keeps: 192
# bits, and a task name of 200 characters plus the digest still fits UNIQUE_KEY_MAX.
_ARGS_DIGEST_CHARS = 48


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
