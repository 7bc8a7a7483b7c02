"""Checks of single values a job or a call holds (names, ids, texts, seconds, times,
JSON), each raising InvalidJobError naming the field. Pure functions, no I/O; a job's
options are checked through them by :mod:`pgqueue.job_options`, and calls that take a
queue, task or job id check it here."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from pgqueue.errors import InvalidJobError
from pgqueue.limits import (
    JOB_ID_MAX,
    MAX_JSON_DEPTH,
    MAX_SECONDS,
    MIN_TIMEOUT_SECONDS,
    QUEUE_NAME_RE,
    RUN_AT_MAX,
    RUN_AT_MIN,
    TASK_NAME_RE,
)

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


def validate_int(value: object, what: str, low: int, high: int) -> int:
    """An integer (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobError(
            f"{what} must be an integer from {low} to {high}, got {value!r}", field=what
        )
    return value


def validate_timeout(value: object, what: str) -> float:
    """A timeout in seconds: a finite number above zero, at most MAX_SECONDS."""
    return validate_seconds(value, what, allow_zero=False)


def validate_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the very string, so that the caller keeps a Literal)."""
    for choice in choices:
        if value == choice:
            return choice
    *others, last = map(repr, choices)
    allowed = f"{', '.join(others)} or {last}" if others else last
    raise InvalidJobError(f"{what} must be {allowed}, got {_short(value)}", field=what)
