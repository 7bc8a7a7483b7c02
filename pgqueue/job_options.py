"""A job's options, declared once: :data:`JOB_OPTIONS` is the one table of them.

Everything else follows from it. ``scripts/gen_job_options.py`` writes the typed
declarations that must exist in source for type checkers and the OpenAPI description
(the fields of ``JobSpec``, ``JobOptions`` and ``Job`` in :mod:`pgqueue.jobs`, of
``JobIn`` and ``JobOut`` in the service's schemas), and ``tests/test_generated.py``
fails when they are stale. Building and checking a job (:mod:`pgqueue.validation`),
reading one back (:mod:`pgqueue.rows`) and the API's request and response mapping loop
over the table. The insert statements name the fields they take (``-- params:``, see
:mod:`pgqueue.sql`), so no path ties a field to a position.

A new job option is one entry here, the generator run, its column (a migration, the
schema) and its place in the SQL that writes and reads jobs; ``tests/
test_job_definition.py`` then fails until every path carries it.
"""

from __future__ import annotations

import functools
import json
import keyword
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pgqueue.checks import (
    validate_choice,
    validate_int,
    validate_job_id,
    validate_queue_name,
    validate_run_at,
    validate_seconds,
    validate_text,
)
from pgqueue.errors import InvalidJobError
from pgqueue.limits import (
    CONCURRENCY_KEY_MAX,
    IDEMPOTENCY_KEY_MAX,
    JOB_ID_MAX,
    MAX_ATTEMPTS_LIMIT,
    MAX_SECONDS,
    MIN_TIMEOUT_SECONDS,
    PRIORITY_MAX,
    PRIORITY_MIN,
    QUEUE_NAME_RE,
    RUN_AT_MAX,
    RUN_AT_MIN,
    SEQUENCE_KEY_MAX,
    TASK_NAME_RE,
    UNIQUE_KEY_MAX,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# What a job of a sequence that fails for good does to the jobs behind it: holds them
# (until it is retried and succeeds, or deleted) or lets them go on.
SequenceOnFailure = Literal["hold", "continue"]
SEQUENCE_ON_FAILURE: tuple[SequenceOnFailure, ...] = ("hold", "continue")
# What a dependant (depends_on) does when a parent ends failed or cancelled: is
# cancelled with it (and its own dependants after it), or runs anyway.
OnParentFailure = Literal["cancel", "run"]
ON_PARENT_FAILURE: tuple[OnParentFailure, ...] = ("cancel", "run")
# How many parents one job may wait for (a chord's callback over a large group).
DEPENDS_ON_MAX = 100_000
# The name of a keyword argument (parent_results_arg): a Python identifier.
ARG_NAME_MAX = 200
ARG_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3

# JSON Schema rules of the names (patterns are searched, not matched: anchored here
# like fullmatch()), also used by the API's query parameters.
QUEUE_NAME_MAX = 64
TASK_NAME_MAX = 200
QUEUE_NAME_RULES: dict[str, Any] = {
    "pattern": f"^{QUEUE_NAME_RE.pattern}$",
    "minLength": 1,
    "maxLength": QUEUE_NAME_MAX,
}
TASK_NAME_RULES: dict[str, Any] = {
    "pattern": f"^{TASK_NAME_RE.pattern}$",
    "minLength": 1,
    "maxLength": TASK_NAME_MAX,
}
NO_NUL_PATTERN = "^[^\\u0000]*$"
# JSON Schema cannot bound a date-time, so run_at's pattern keeps to the years whose
# every instant, in any time zone, lies within RUN_AT_MIN..RUN_AT_MAX (0002 to 9998),
# and to RFC 3339's form with an explicit offset. The server's own bounds are the
# instants, a day inside years 0001 and 9999: a little wider than documented.
_YEARS = r"(000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])"
RUN_AT_PATTERN = (
    f"^{_YEARS}-[0-9]{{2}}-[0-9]{{2}}[Tt][0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\\.[0-9]+)?"
    "([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOption:
    """One option of a job, with everything each face of pgqueue needs to know of it."""

    name: str  # in JobOptions, JobSpec and Job, and the column's name
    accepts: str  # its type in JobOptions: what callers may give (None always means unset)
    stored: str  # its type in JobSpec, once checked
    default: Any  # JobSpec's value when the option is not given
    # The given value (never None) -> the stored one, or InvalidJobError naming the field.
    check: Callable[[Any], Any]
    # Its type on Job (a row read back); None when a job does not keep it as such.
    on_job: str | None
    description: str  # for the docs and the API's description
    api_name: str = ""  # its name in the API's bodies (default: name)
    api_type: str = ""  # its type in the API's bodies (default: stored, without None)
    schema: Mapping[str, Any] = field(default_factory=dict)  # JSON Schema rules

    def __post_init__(self) -> None:
        if not self.api_name:
            object.__setattr__(self, "api_name", self.name)
        if not self.api_type:
            object.__setattr__(self, "api_type", self.stored.removesuffix(" | None"))


def _text(name: str, max_length: int) -> Callable[[Any], Any]:
    return functools.partial(validate_text, what=name, max_length=max_length)


def _seconds(name: str, *, allow_zero: bool) -> Callable[[Any], Any]:
    return functools.partial(validate_seconds, what=name, allow_zero=allow_zero)


def _integer(name: str, low: int, high: int) -> Callable[[Any], Any]:
    return functools.partial(validate_int, what=name, low=low, high=high)


def _depends_on(value: Any) -> tuple[int, ...]:
    """The parents' ids, in order: 1 to DEPENDS_ON_MAX job ids, none twice."""
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise InvalidJobError(
            f"depends_on must be a list of job ids, got {type(value).__name__}", field="depends_on"
        )
    if not 1 <= len(value) <= DEPENDS_ON_MAX:
        raise InvalidJobError(
            f"depends_on must name 1 to {DEPENDS_ON_MAX} jobs, got {len(value)}", field="depends_on"
        )
    try:
        ids = tuple(validate_job_id(job_id) for job_id in value)
    except InvalidJobError as exc:
        raise InvalidJobError(f"depends_on: {exc}", field="depends_on") from exc
    if len(set(ids)) != len(ids):
        raise InvalidJobError("depends_on names a job twice", field="depends_on")
    return ids


def _arg_name(value: Any) -> str:
    """A keyword argument's name: an ASCII identifier of at most ARG_NAME_MAX characters."""
    if (
        not isinstance(value, str)
        or not value.isidentifier()
        or not value.isascii()
        or keyword.iskeyword(value)
        or len(value) > ARG_NAME_MAX
    ):
        shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:77]}..."
        raise InvalidJobError(
            f"parent_results_arg must name a keyword argument (an identifier of at most "
            f"{ARG_NAME_MAX} characters), got {shown}",
            field="parent_results_arg",
        )
    return value


# A W3C trace context carrier (https://www.w3.org/TR/trace-context/): traceparent is
# version-traceid-parentid-flags in lowercase hex (version ff is invalid, an all-zero
# trace or parent id too); tracestate is at most 32 list members, and a platform may cut
# it at 512 characters, the bound kept here, of printable ASCII.
TRACE_CONTEXT_KEYS = ("traceparent", "tracestate")
TRACEPARENT_PATTERN = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_TRACEPARENT = re.compile(TRACEPARENT_PATTERN)
TRACESTATE_MAX = 512
TRACESTATE_PATTERN = "^[ -~]*$"
_TRACESTATE = re.compile("[\x20-\x7e]*")


def traceparent_shaped(value: object) -> bool:
    """Whether ``value`` has the shape of a W3C traceparent (what a job stores)."""
    return isinstance(value, str) and _TRACEPARENT.fullmatch(value) is not None


def valid_traceparent(value: object) -> bool:
    """Whether ``value`` is a valid W3C traceparent: shaped so, not version ff, its
    trace id and parent id not all zeros (what a request's header must be to be taken).
    A job stores any shaped one (its JSON Schema says no more): a tracer ignores an
    invalid one and starts a trace of its own."""
    return (
        traceparent_shaped(value)
        and isinstance(value, str)
        and not value.startswith("ff")
        and value[3:35] != "0" * 32
        and value[36:52] != "0" * 16
    )


def _trace_context(value: Any) -> str:
    """A job's trace context: a W3C carrier, ``{"traceparent": ..., "tracestate": ...}``
    (tracestate optional), stored as canonical JSON text (what the insert statements
    take). Also takes that JSON text, the stored form a JobSpec holds, so that checking
    a JobSpec again (check_spec) gives the same value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidJobError(
                "trace_context must be an object (or its JSON text)", field="trace_context"
            ) from exc
    if not isinstance(value, dict):
        raise InvalidJobError(
            f"trace_context must be a dict of traceparent and tracestate, got "
            f"{type(value).__name__}",
            field="trace_context",
        )
    unknown = sorted(map(str, value.keys() - set(TRACE_CONTEXT_KEYS)))
    if unknown:
        raise InvalidJobError(
            f"trace_context takes only traceparent and tracestate, not {', '.join(unknown)}",
            field="trace_context",
        )
    parent = value.get("traceparent")
    if not traceparent_shaped(parent):
        shown = repr(parent) if len(repr(parent)) <= 80 else f"{repr(parent)[:77]}..."
        raise InvalidJobError(
            f"trace_context's traceparent must be a W3C traceparent "
            f"(<2 hex>-<32 hex>-<16 hex>-<2 hex>, lowercase), got {shown}",
            field="trace_context",
        )
    state = value.get("tracestate")
    if state is not None and (
        not isinstance(state, str)
        or len(state) > TRACESTATE_MAX
        or _TRACESTATE.fullmatch(state) is None
    ):
        raise InvalidJobError(
            f"trace_context's tracestate must be text of at most {TRACESTATE_MAX} printable "
            "ASCII characters",
            field="trace_context",
        )
    carrier = {"traceparent": parent} if not state else {"traceparent": parent, "tracestate": state}
    return json.dumps(carrier, separators=(",", ":"))


def _key_rules(max_length: int) -> dict[str, Any]:
    return {"minLength": 1, "maxLength": max_length, "pattern": NO_NUL_PATTERN}


def _seconds_rules(*, allow_zero: bool) -> dict[str, Any]:
    return {"minimum": 0 if allow_zero else MIN_TIMEOUT_SECONDS, "maximum": MAX_SECONDS}


# The order is JobSpec's (after task and args_json), JobOptions' and the API's.
JOB_OPTIONS: tuple[JobOption, ...] = (
    JobOption(
        name="queue",
        accepts="str",
        stored="str",
        default=DEFAULT_QUEUE,
        check=validate_queue_name,
        on_job="str",
        description="the queue it goes in (default: the task's, else 'default')",
        schema=QUEUE_NAME_RULES,
    ),
    JobOption(
        name="priority",
        accepts="int",
        stored="int",
        default=0,
        check=_integer("priority", PRIORITY_MIN, PRIORITY_MAX),
        on_job="int",
        description="higher runs first (default: the task's, else 0)",
        schema={"minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
    ),
    JobOption(
        name="max_attempts",
        accepts="int",
        stored="int",
        default=DEFAULT_MAX_ATTEMPTS,
        check=_integer("max_attempts", 1, MAX_ATTEMPTS_LIMIT),
        on_job="int",
        description=f"attempts before it fails for good (default: the task's, else "
        f"{DEFAULT_MAX_ATTEMPTS})",
        schema={"minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT},
    ),
    JobOption(
        name="run_at",
        accepts="datetime",
        stored="datetime | None",
        default=None,
        check=validate_run_at,
        on_job="datetime",  # always set on a row: now() + delay when not given
        description=f"when to run it, with a time zone: from {RUN_AT_MIN.isoformat()} to "
        f"{RUN_AT_MAX.isoformat()} (excludes delay)",
        schema={"pattern": RUN_AT_PATTERN},
    ),
    JobOption(
        name="delay",
        accepts="float | timedelta",
        stored="float",
        default=0.0,
        check=_seconds("delay", allow_zero=True),
        on_job=None,  # what it sets is run_at
        description="run it this many seconds from now (excludes run_at)",
        api_name="delay_seconds",
        schema=_seconds_rules(allow_zero=True),
    ),
    JobOption(
        name="idempotency_key",
        accepts="str",
        stored="str | None",
        default=None,
        check=_text("idempotency_key", IDEMPOTENCY_KEY_MAX),
        on_job="str | None",
        description="one job per key while it is queued, running or succeeded",
        schema=_key_rules(IDEMPOTENCY_KEY_MAX),
    ),
    JobOption(
        name="timeout",
        accepts="float | timedelta",
        stored="float | None",
        default=None,
        check=_seconds("timeout", allow_zero=False),
        on_job="float | None",
        description="seconds one attempt may run (default: the task's timeout)",
        api_name="timeout_seconds",
        schema=_seconds_rules(allow_zero=False),
    ),
    JobOption(
        name="concurrency_key",
        accepts="str",
        stored="str | None",
        default=None,
        check=_text("concurrency_key", CONCURRENCY_KEY_MAX),
        on_job="str | None",
        description="jobs sharing this key share its concurrency and rate limits, and "
        "take turns with other keys",
        schema=_key_rules(CONCURRENCY_KEY_MAX),
    ),
    JobOption(
        name="unique_key",
        accepts="str",
        stored="str | None",
        default=None,
        check=_text("unique_key", UNIQUE_KEY_MAX),
        on_job="str | None",
        description="the key of unique_for or debounce (default: the task and its args "
        "for the first, the task for the second)",
        schema=_key_rules(UNIQUE_KEY_MAX),
    ),
    JobOption(
        name="unique_for",
        accepts="float | timedelta",
        stored="float | None",
        default=None,
        check=_seconds("unique_for", allow_zero=False),
        on_job="float | None",
        description="another enqueue of the unique key within this many seconds returns "
        "this job (excludes idempotency_key, debounce and sequence_key)",
        api_name="unique_for_seconds",
        schema=_seconds_rules(allow_zero=False),
    ),
    JobOption(
        name="debounce",
        accepts="float | timedelta",
        stored="float | None",
        default=None,
        check=_seconds("debounce", allow_zero=True),
        on_job="float | None",
        description="a pending job of the unique key takes these args and runs this many "
        "seconds from now instead (excludes idempotency_key, unique_for and sequence_key)",
        api_name="debounce_seconds",
        schema=_seconds_rules(allow_zero=True),
    ),
    JobOption(
        name="sequence_key",
        accepts="str",
        stored="str | None",
        default=None,
        check=_text("sequence_key", SEQUENCE_KEY_MAX),
        on_job="str | None",
        description="jobs sharing this key run one at a time, in enqueue order (excludes "
        "idempotency_key, unique_for and debounce)",
        schema=_key_rules(SEQUENCE_KEY_MAX),
    ),
    JobOption(
        name="sequence_on_failure",
        accepts="SequenceOnFailure",
        stored="SequenceOnFailure | None",
        default=None,
        check=functools.partial(
            validate_choice, what="sequence_on_failure", choices=SEQUENCE_ON_FAILURE
        ),
        on_job="SequenceOnFailure | None",
        description="when this job fails for good, hold the rest of its sequence (the "
        "default) or let them go on; needs sequence_key",
        api_type='Literal["hold", "continue"]',
    ),
    JobOption(
        name="depends_on",
        accepts="list[int] | tuple[int, ...]",
        stored="tuple[int, ...] | None",
        default=None,
        check=_depends_on,
        on_job="tuple[int, ...] | None",
        api_type="list[int]",
        description="the ids of the jobs this one waits for: it runs once every one has "
        "succeeded (excludes idempotency_key, unique_for, debounce and sequence_key)",
        schema={
            "minItems": 1,
            "maxItems": DEPENDS_ON_MAX,
            "uniqueItems": True,
            "items": {"type": "integer", "minimum": 1, "maximum": JOB_ID_MAX},
        },
    ),
    JobOption(
        name="on_parent_failure",
        accepts="OnParentFailure",
        stored="OnParentFailure | None",
        default=None,
        check=functools.partial(
            validate_choice, what="on_parent_failure", choices=ON_PARENT_FAILURE
        ),
        on_job="OnParentFailure | None",
        description="when a parent ends failed or cancelled: cancel this job and its own "
        "dependants (the default) or run it anyway; needs depends_on",
        api_type='Literal["cancel", "run"]',
    ),
    JobOption(
        name="parent_results_arg",
        accepts="str",
        stored="str | None",
        default=None,
        check=_arg_name,
        on_job="str | None",
        description="the keyword argument that receives the parents' results when the job "
        "is released: one parent's result, or a list of them in depends_on order; needs "
        "depends_on",
        schema={"minLength": 1, "maxLength": ARG_NAME_MAX, "pattern": ARG_NAME_PATTERN},
    ),
    JobOption(
        name="trace_context",
        accepts="Mapping[str, str] | str",
        stored="str | None",
        default=None,
        check=_trace_context,
        on_job="dict[str, str] | None",
        description="the W3C trace context of the enqueue (traceparent, and tracestate if "
        "any), so that the job's run joins the trace that enqueued it; set by an "
        "instrumentation (pgqueue.contrib.opentelemetry), or over HTTP from the "
        "traceparent and tracestate headers",
        api_type="dict[str, str]",
        schema={
            "required": ["traceparent"],
            "additionalProperties": False,
            "properties": {
                "traceparent": {"type": "string", "pattern": TRACEPARENT_PATTERN},
                "tracestate": {
                    "type": "string",
                    "maxLength": TRACESTATE_MAX,
                    "pattern": TRACESTATE_PATTERN,
                },
            },
        },
    ),
)
OPTIONS_BY_NAME: dict[str, JobOption] = {option.name: option for option in JOB_OPTIONS}
OPTION_NAMES = frozenset(OPTIONS_BY_NAME)
OPTION_DEFAULTS: dict[str, Any] = {option.name: option.default for option in JOB_OPTIONS}
# The options a Job keeps as they were given (run_at is the database's, see rows.py).
JOB_KEPT = tuple(option.name for option in JOB_OPTIONS if option.on_job is not None)
