"""The API's bodies, as msgspec structs: Litestar decodes requests into them and
publishes them in the OpenAPI schema.

Decoding checks types only (a string where a number goes is a 400). The rules on the
values (names, ranges, lengths) are pgqueue's own, checked once where a job is built
(``pgqueue.validation.build_job``: a 422 naming the field); the description documents the
same rules, built from the same constants, so that a client generated from it sends
nothing the server refuses (see ``document``). See problems.py for why."""

from __future__ import annotations

import functools
import itertools
import operator
import types
import typing
from datetime import datetime  # noqa: TC003 - msgspec needs it at runtime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar.openapi.spec import OpenAPIType, Reference, Schema

from pgqueue.limits import (
    CONCURRENCY_KEY_MAX,
    IDEMPOTENCY_KEY_MAX,
    JOB_ID_MAX,
    MAX_ATTEMPTS_LIMIT,
    MAX_JSON_DEPTH,
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
from pgqueue.scheduling.ticks import EVERY_MAX_SECONDS, time_zone_names
from pgqueue.states import JobState

if TYPE_CHECKING:
    from litestar.openapi.spec import OpenAPI

    from pgqueue.flow import LimitStatus
    from pgqueue.jobs import Job, QueueStats, SequenceStatus

    from .settings import ServiceSettings

QUEUE_NAME_MAX = 64
TASK_NAME_MAX = 200
# JSON Schema patterns are searched, not matched: anchored here like fullmatch().
QUEUE_NAME_PATTERN = f"^{QUEUE_NAME_RE.pattern}$"
TASK_NAME_PATTERN = f"^{TASK_NAME_RE.pattern}$"
# JSON Schema cannot bound a date-time, so run_at's pattern keeps to the years whose
# every instant, in any time zone, lies within RUN_AT_MIN..RUN_AT_MAX (0002 to 9998),
# and to RFC 3339's form with an explicit offset. The server's own bounds are the
# instants, a day inside years 0001 and 9999: a little wider than documented.
_YEARS = r"(000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9])"
RUN_AT_PATTERN = (
    f"^{_YEARS}-[0-9]{{2}}-[0-9]{{2}}[Tt][0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}(\\.[0-9]+)?"
    "([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def documented(description: str | None = None, **rules: Any) -> msgspec.Meta:
    """A field's rules in the OpenAPI description only (Litestar's ``schema_extra``):
    msgspec does not enforce them, build_job does (see the module's docstring)."""
    return msgspec.Meta(description=description, extra_json_schema={"extra": rules})


def parameter(openapi_type: OpenAPIType, **rules: Any) -> dict[str, Any]:
    """A parameter's schema (Litestar's ``schema_extra``), without the null Litestar
    offers for an optional one: a query parameter is left out, never null."""
    return {**rules, "type": openapi_type, "oneOf": None}


def id_schema(description: str) -> dict[str, Any]:
    """A job id as the description gives it wherever one is taken (path, ?cursor=): an
    integer, which the handlers take as text and parse (``jobs.parse_job_id``)."""
    return parameter(OpenAPIType.INTEGER, minimum=1, maximum=JOB_ID_MAX, description=description)


QUEUE_NAME_RULES: dict[str, Any] = {
    "pattern": QUEUE_NAME_PATTERN,
    "minLength": 1,
    "maxLength": QUEUE_NAME_MAX,
}
TASK_NAME_RULES: dict[str, Any] = {
    "pattern": TASK_NAME_PATTERN,
    "minLength": 1,
    "maxLength": TASK_NAME_MAX,
}
NO_NUL_PATTERN = "^[^\\u0000]*$"
# A header value cannot carry NUL, and HTTP strips its surrounding whitespace: one of
# spaces only would arrive empty.
IDEMPOTENCY_HEADER_RULES: dict[str, Any] = {
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX,
    "pattern": r"[^\s]",
}


class JobIn(msgspec.Struct, forbid_unknown_fields=True):
    """A job to enqueue. Options left out (or null) take the defaults (queue
    ``default``, priority 0, three attempts, run now). ``run_at`` and ``delay_seconds``
    exclude each other."""

    task: Annotated[str, documented(**TASK_NAME_RULES)]
    args: Annotated[
        dict[str, Any],
        documented(
            f"the task's keyword arguments: JSON at most {MAX_JSON_DEPTH} levels deep, "
            "without NUL characters; the server's limit on its size applies (413)"
        ),
    ] = msgspec.field(default_factory=dict)
    queue: Annotated[str, documented(**QUEUE_NAME_RULES)] | None = None
    priority: (
        Annotated[int, documented("higher runs first", minimum=PRIORITY_MIN, maximum=PRIORITY_MAX)]
        | None
    ) = None
    run_at: (
        Annotated[
            datetime,
            documented(
                f"when to run it, with a time zone: from {RUN_AT_MIN.isoformat()} to "
                f"{RUN_AT_MAX.isoformat()}",
                pattern=RUN_AT_PATTERN,
            ),
        ]
        | None
    ) = None
    delay_seconds: (
        Annotated[
            float, documented("run it this many seconds from now", minimum=0, maximum=MAX_SECONDS)
        ]
        | None
    ) = None
    max_attempts: Annotated[int, documented(minimum=1, maximum=MAX_ATTEMPTS_LIMIT)] | None = None
    idempotency_key: (
        Annotated[
            str,
            documented(
                "one job per key while it is queued, running or succeeded",
                minLength=1,
                maxLength=IDEMPOTENCY_KEY_MAX,
                pattern=NO_NUL_PATTERN,
            ),
        ]
        | None
    ) = None
    timeout_seconds: (
        Annotated[
            float,
            documented(
                "how long one attempt may run", minimum=MIN_TIMEOUT_SECONDS, maximum=MAX_SECONDS
            ),
        ]
        | None
    ) = None
    concurrency_key: (
        Annotated[
            str,
            documented(
                "jobs sharing this key share its concurrency and rate limits",
                minLength=1,
                maxLength=CONCURRENCY_KEY_MAX,
                pattern=NO_NUL_PATTERN,
            ),
        ]
        | None
    ) = None
    unique_key: (
        Annotated[
            str,
            documented(
                "the key of unique_for_seconds or debounce_seconds (default: the task and "
                "its args for the first, the task for the second)",
                minLength=1,
                maxLength=UNIQUE_KEY_MAX,
                pattern=NO_NUL_PATTERN,
            ),
        ]
        | None
    ) = None
    unique_for_seconds: (
        Annotated[
            float,
            documented(
                "another enqueue of the unique key within this many seconds returns this "
                "job (excludes idempotency_key and debounce_seconds)",
                minimum=MIN_TIMEOUT_SECONDS,
                maximum=MAX_SECONDS,
            ),
        ]
        | None
    ) = None
    debounce_seconds: (
        Annotated[
            float,
            documented(
                "a pending job of the unique key takes these args and runs this many seconds "
                "from now instead (excludes idempotency_key and unique_for_seconds)",
                minimum=0,
                maximum=MAX_SECONDS,
            ),
        ]
        | None
    ) = None
    sequence_key: (
        Annotated[
            str,
            documented(
                "jobs sharing this key run one at a time, in enqueue order (excludes "
                "idempotency_key, unique_for_seconds and debounce_seconds)",
                minLength=1,
                maxLength=SEQUENCE_KEY_MAX,
                pattern=NO_NUL_PATTERN,
            ),
        ]
        | None
    ) = None
    sequence_on_failure: (
        Annotated[
            Literal["hold", "continue"],
            documented(
                "when this job fails for good, hold the rest of its sequence (the default) "
                "or let them go on; needs sequence_key"
            ),
        ]
        | None
    ) = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    jobs: Annotated[list[JobIn], documented(minItems=1)]


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
    concurrency_key: str | None
    unique_key: str | None
    unique_for_seconds: float | None
    debounce_seconds: float | None
    sequence_key: str | None
    sequence_on_failure: str | None
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
            concurrency_key=job.concurrency_key,
            unique_key=job.unique_key,
            unique_for_seconds=job.unique_for,
            debounce_seconds=job.debounce,
            sequence_key=job.sequence_key,
            sequence_on_failure=job.sequence_on_failure,
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


class SequenceOut(msgspec.Struct):
    """A sequence with unfinished jobs: how many (blocked, queued, running, or failed
    and holding the rest), and the job the rest wait for."""

    sequence_key: str
    unfinished: int
    head_job_id: int | None
    head_state: str | None
    head_queue: str | None

    @classmethod
    def of(cls, status: SequenceStatus) -> SequenceOut:
        return cls(
            sequence_key=status.sequence_key,
            unfinished=status.unfinished,
            head_job_id=status.head_job_id,
            head_state=None if status.head_state is None else status.head_state.value,
            head_queue=status.head_queue,
        )


class SequenceList(msgspec.Struct):
    sequences: list[SequenceOut]


class Problem(msgspec.Struct):
    """An error (RFC 9457 problem details, ``application/problem+json``): ``detail``
    says what was wrong in this case. Some errors add fields: ``errors`` (what did not
    decode), ``index`` (the failing item of a batch), ``field`` (the job's field that
    broke a rule), ``job_id`` (the job holding an idempotency key)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None
    index: int | None = None
    job_id: int | None = None
    field: str | None = None


_JSON_VALUE = Reference(ref="#/components/schemas/JsonValue")


def _json_object() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        additional_properties=_JSON_VALUE,
        property_names=Schema(pattern=NO_NUL_PATTERN),
    )


def _unique_modes() -> list[Schema | Reference]:
    """idempotency_key, unique_for_seconds, debounce_seconds and sequence_key exclude
    each other (at most one given, not null); unique_key needs unique_for_seconds or
    debounce_seconds, and sequence_on_failure needs sequence_key."""
    modes = {
        "idempotency_key": OpenAPIType.STRING,
        "unique_for_seconds": OpenAPIType.NUMBER,
        "debounce_seconds": OpenAPIType.NUMBER,
        "sequence_key": OpenAPIType.STRING,
    }
    rules: list[Schema | Reference] = [
        Schema(
            schema_not=Schema(
                required=[a, b], properties={a: Schema(type=modes[a]), b: Schema(type=modes[b])}
            )
        )
        for a, b in itertools.combinations(modes, 2)
    ]
    not_a_number = Schema(schema_not=Schema(type=OpenAPIType.NUMBER))
    rules.append(
        Schema(
            schema_not=Schema(
                required=["sequence_on_failure"],
                properties={
                    "sequence_on_failure": Schema(type=OpenAPIType.STRING),
                    "sequence_key": Schema(schema_not=Schema(type=OpenAPIType.STRING)),
                },
            )
        )
    )
    rules.append(
        Schema(
            schema_not=Schema(
                required=["unique_key"],
                properties={
                    "unique_key": Schema(type=OpenAPIType.STRING),
                    "unique_for_seconds": not_a_number,
                    "debounce_seconds": not_a_number,
                },
            )
        )
    )
    return rules


def document(openapi: OpenAPI, settings: ServiceSettings) -> None:
    """Complete the description Litestar generated with what it cannot say by itself:
    this server's limits (its settings), that the bodies take no other members, and
    that run_at and delay_seconds exclude each other. Called once, as the app is made."""
    schemas = openapi.components.schemas if openapi.components else {}
    job_in, batch_in = schemas["JobIn"], schemas["BatchIn"]
    job_in.additional_properties = batch_in.additional_properties = False
    # Both given (not null) is refused; either, or neither, is fine.
    job_in.schema_not = Schema(
        required=["run_at", "delay_seconds"],
        properties={
            "run_at": Schema(type=OpenAPIType.STRING),
            "delay_seconds": Schema(type=OpenAPIType.NUMBER),
        },
    )
    job_in.all_of = _unique_modes()
    # args: any JSON without NUL characters (jsonb refuses them), in keys or strings.
    schemas["JsonValue"] = Schema(
        description="any JSON value without NUL characters",
        any_of=[
            Schema(type=OpenAPIType.NULL),
            Schema(type=OpenAPIType.BOOLEAN),
            Schema(type=OpenAPIType.NUMBER),
            Schema(type=OpenAPIType.STRING, pattern=NO_NUL_PATTERN),
            Schema(type=OpenAPIType.ARRAY, items=_JSON_VALUE),
            _json_object(),
        ],
    )
    args = (job_in.properties or {})["args"]
    if isinstance(args, Schema):
        args.additional_properties = _JSON_VALUE
        args.property_names = Schema(pattern=NO_NUL_PATTERN)
    jobs = (batch_in.properties or {})["jobs"]
    if isinstance(jobs, Schema):
        jobs.max_items = settings.max_batch_jobs
    limits = {
        ("/v1/jobs/{job_id}", "wait"): settings.max_wait_seconds,
        ("/v1/jobs", "limit"): settings.max_page_size,
    }
    for (path, name), maximum in limits.items():
        operation = getattr(openapi.paths[path] if openapi.paths else None, "get", None)
        for parameter in getattr(operation, "parameters", None) or []:
            if getattr(parameter, "name", None) == name and isinstance(parameter.schema, Schema):
                parameter.schema.maximum = maximum
                break
        else:
            raise LookupError(f"GET {path} has no parameter {name!r} to document")


STATE_NAMES = [state.value for state in JobState]


@functools.cache
def json_types(struct: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A twin of ``struct`` that a strict decode checks the body's JSON types against.

    Litestar converts a body into its struct in msgspec's lax mode, made for query
    strings: it would take ``"5"`` for a number and ``0`` for a date-time, which the
    description refuses. The twin is decoded strictly, with each integer field a float:
    JSON Schema's integer includes ``5.0``, and the lax decode has already refused a
    number that is not integral."""
    hints = typing.get_type_hints(struct)
    fields = [
        (f.name, _json_type(hints[f.name]), None)
        if not f.required
        else (f.name, _json_type(hints[f.name]))
        for f in msgspec.structs.fields(struct)
    ]
    return msgspec.defstruct(f"{struct.__name__}Types", fields, forbid_unknown_fields=True)


def _json_type(hint: Any) -> Any:
    if hint is int:
        return float
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return json_types(hint)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return list[_json_type(args[0])]  # type: ignore[misc]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return functools.reduce(operator.or_, map(_json_type, args))
    return hint


# --- periodic schedules (service/schedules.py) ------------------------------------------

if TYPE_CHECKING:
    from pgqueue.scheduling.specs import Schedule

SCHEDULE_NAME_RULES: dict[str, Any] = {
    "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$",
    "minLength": 1,
    "maxLength": 200,
}
_CRON_DOC = (
    "a cron expression (five fields, or six with seconds first), read in timezone; "
    "exactly one of cron and every_seconds"
)


def _cron_field(number: str) -> str:
    step = r"(/([1-9]|[1-5][0-9]))?"
    return rf"(\*{step}|({number})(,({number}))*)"


# The description's cron is the common subset (numbers, lists and steps of stars; five
# fields, or six with seconds first), all of which the server takes. The server takes
# more of cronsim's syntax (ranges, names, L and W), which the description leaves out, as
# a pattern cannot tell which of those name no instant at all (Feb 31): days go to 28.
_SIXTIETHS = r"[0-9]|[1-5][0-9]"
_CRON_PATTERN = "^({sec} )?{fields}$".format(
    sec=_cron_field(_SIXTIETHS),
    fields=" ".join(
        _cron_field(n)
        for n in (
            _SIXTIETHS,
            r"[0-9]|1[0-9]|2[0-3]",
            r"[1-9]|1[0-9]|2[0-8]",
            r"[1-9]|1[0-2]",
            "[0-7]",
        )
    ),
)
_CRON_RULES: dict[str, Any] = {
    "description": _CRON_DOC,
    "pattern": _CRON_PATTERN,
    "minLength": 9,
    "maxLength": 200,
}
_TIMEZONE_RULES: dict[str, Any] = {
    "description": "an IANA time zone, such as Europe/Paris",
    "pattern": r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$",
    "minLength": 1,
    "maxLength": 64,
}
_EVERY_DOC = (
    "seconds between ticks, counted from the Unix epoch (UTC); at least 1; exactly one "
    "of cron and every_seconds"
)


class ScheduleIn(msgspec.Struct, forbid_unknown_fields=True):
    """A schedule to add, or to put in place of the one with this name (its pause is
    kept). Options left out take the task's defaults where the service knows the task,
    else queue ``default``, priority 0, three attempts."""

    name: Annotated[str, documented(**SCHEDULE_NAME_RULES)]
    task: Annotated[str, documented(**TASK_NAME_RULES)]
    cron: Annotated[str, documented(**_CRON_RULES)] | None = None
    every_seconds: (
        Annotated[float, documented(_EVERY_DOC, minimum=1, maximum=EVERY_MAX_SECONDS)] | None
    ) = None
    timezone: Annotated[str, documented(**_TIMEZONE_RULES)] = "UTC"
    args: Annotated[
        dict[str, Any], documented("the task's keyword arguments, for every tick's job")
    ] = msgspec.field(default_factory=dict)
    queue: Annotated[str, documented(**QUEUE_NAME_RULES)] | None = None
    priority: (
        Annotated[int, documented("higher runs first", minimum=PRIORITY_MIN, maximum=PRIORITY_MAX)]
        | None
    ) = None
    max_attempts: Annotated[int, documented(minimum=1, maximum=MAX_ATTEMPTS_LIMIT)] | None = None
    timeout_seconds: (
        Annotated[float, documented(minimum=MIN_TIMEOUT_SECONDS, maximum=MAX_SECONDS)] | None
    ) = None
    catch_up: Annotated[
        bool, documented("ticks missed while no worker ran: one job for them all, or none")
    ] = False


class SchedulePatch(msgspec.Struct, forbid_unknown_fields=True):
    """What to change in a schedule; members left out (or null) stay as they are. A
    cron replaces an every_seconds, and the other way round."""

    task: Annotated[str, documented(**TASK_NAME_RULES)] | None = None
    cron: Annotated[str, documented(**_CRON_RULES)] | None = None
    every_seconds: (
        Annotated[float, documented(_EVERY_DOC, minimum=1, maximum=EVERY_MAX_SECONDS)] | None
    ) = None
    timezone: Annotated[str, documented(**_TIMEZONE_RULES)] | None = None
    args: dict[str, Any] | None = None
    queue: Annotated[str, documented(**QUEUE_NAME_RULES)] | None = None
    priority: Annotated[int, documented(minimum=PRIORITY_MIN, maximum=PRIORITY_MAX)] | None = None
    max_attempts: Annotated[int, documented(minimum=1, maximum=MAX_ATTEMPTS_LIMIT)] | None = None
    timeout_seconds: (
        Annotated[float, documented(minimum=MIN_TIMEOUT_SECONDS, maximum=MAX_SECONDS)] | None
    ) = None
    catch_up: bool | None = None


class ScheduleOut(msgspec.Struct):
    name: str
    task: str
    queue: str
    cron: str | None
    every_seconds: float | None
    timezone: str
    catch_up: bool
    paused: bool
    source: str
    next_run_at: datetime | None
    last_tick: datetime | None
    last_enqueued_at: datetime | None
    last_manual: bool | None
    last_job_id: int | None
    last_job_state: str | None
    args: dict[str, Any]
    priority: int
    max_attempts: int
    timeout_seconds: float | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleOut:
        return cls(
            name=schedule.name,
            task=schedule.task,
            queue=schedule.queue,
            cron=schedule.cron,
            every_seconds=None if schedule.every is None else schedule.every.total_seconds(),
            timezone=schedule.timezone,
            catch_up=schedule.catch_up,
            paused=schedule.paused,
            source=schedule.source,
            next_run_at=schedule.next_run_at,
            last_tick=schedule.last_tick,
            last_enqueued_at=schedule.last_enqueued_at,
            last_manual=schedule.last_manual,
            last_job_id=schedule.last_job_id,
            last_job_state=schedule.last_job_state,
            args=schedule.args,
            priority=schedule.priority,
            max_attempts=schedule.max_attempts,
            timeout_seconds=schedule.timeout,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )


class ScheduleList(msgspec.Struct):
    schedules: list[ScheduleOut]


def document_schedules(openapi: OpenAPI) -> None:
    """What Litestar cannot say of the schedules' bodies by itself: they take no other
    members, and their args are JSON objects as a job's are (see :func:`document`)."""
    schemas = openapi.components.schemas if openapi.components else {}
    schemas["TimeZone"] = Schema(
        type=OpenAPIType.STRING,
        description="an IANA time zone, such as Europe/Paris",
        enum=sorted(time_zone_names()),
    )
    for struct in ("ScheduleIn", "SchedulePatch"):
        schema = schemas[struct]
        schema.additional_properties = False
        # Not both rules (null is as good as left out).
        schema.schema_not = Schema(
            required=["cron", "every_seconds"],
            properties={
                "cron": Schema(type=OpenAPIType.STRING),
                "every_seconds": Schema(type=OpenAPIType.NUMBER),
            },
        )
        # Time zones: the names the server knows (Python's tz database), a component.
        zone = Reference(ref="#/components/schemas/TimeZone")
        properties = schema.properties or {}
        properties["timezone"] = (
            zone if struct == "ScheduleIn" else Schema(one_of=[zone, Schema(type=OpenAPIType.NULL)])
        )
        if struct == "ScheduleIn":  # and a new schedule needs one
            schema.any_of = [
                Schema(required=[rule], properties={rule: Schema(type=kind)})
                for rule, kind in (
                    ("cron", OpenAPIType.STRING),
                    ("every_seconds", OpenAPIType.NUMBER),
                )
            ]
        args = (schema.properties or {})["args"]
        for variant in [args, *(getattr(args, "one_of", None) or [])]:
            if isinstance(variant, Schema) and variant.type == OpenAPIType.OBJECT:
                variant.additional_properties = _JSON_VALUE
                variant.property_names = Schema(pattern=NO_NUL_PATTERN)


# --- flow control: /v1/limits ------------------------------------------------------------

# What the HTTP API documents of a rate: the count within its bounds, the period a
# whole number of one unit within 1 ms to 366 days (pgqueue.flow.Rate.parse also takes
# spaces and decimals, which the description leaves out).
RATE_RULES: dict[str, Any] = {
    "pattern": r"^(1000000|[1-9][0-9]{0,5})/"
    r"((([1-9][0-9]{0,2})?(ms|s|m|h))|(([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])?d))$",
}
RATE_TEXT = (
    "COUNT/PERIOD: at most COUNT job starts in any window of PERIOD, such as 100/m, 5/s, "
    "10/30s, 1000/h; "
)
LIMIT_RULES: dict[str, Any] = {"minimum": 1, "maximum": 1_000_000}


class QueueLimitIn(msgspec.Struct, forbid_unknown_fields=True):
    """A queue's limits, all replaced; left out or null: no limit of that kind. With
    none at all the queue is still limited: its concurrency keys take turns."""

    concurrency: Annotated[int | None, documented("running jobs of the queue", **LIMIT_RULES)] = (
        None
    )
    rate: Annotated[str | None, documented(RATE_TEXT + "job starts of the queue", **RATE_RULES)] = (
        None
    )
    key_concurrency: Annotated[
        int | None, documented("running jobs of each concurrency key", **LIMIT_RULES)
    ] = None
    key_rate: Annotated[
        str | None, documented(RATE_TEXT + "job starts of each key", **RATE_RULES)
    ] = None


class KeyLimitIn(msgspec.Struct, forbid_unknown_fields=True):
    """One concurrency key's own limits, instead of its queue's key defaults."""

    concurrency: Annotated[int | None, documented("running jobs of the key", **LIMIT_RULES)] = None
    rate: Annotated[str | None, documented(RATE_TEXT + "job starts of the key", **RATE_RULES)] = (
        None
    )


class LimitOut(msgspec.Struct):
    """A limited queue (``concurrency_key`` null) or one of its keys: running against
    its concurrency limit, starts in the current window against its rate."""

    queue: str
    concurrency_key: str | None
    concurrency: int | None
    running: int
    rate: str | None
    recent_starts: int
    queued: int

    @classmethod
    def of(cls, status: LimitStatus) -> LimitOut:
        return cls(
            queue=status.queue,
            concurrency_key=status.concurrency_key,
            concurrency=status.concurrency,
            running=status.running,
            rate=None if status.rate is None else str(status.rate),
            recent_starts=status.recent_starts,
            queued=status.queued,
        )


class LimitList(msgspec.Struct):
    limits: list[LimitOut]


def document_limits(openapi: OpenAPI) -> None:
    """What Litestar cannot say of the limits' bodies by itself: no other members."""
    schemas = openapi.components.schemas if openapi.components else {}
    for struct in ("QueueLimitIn", "KeyLimitIn"):
        schemas[struct].additional_properties = False
