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
from pgqueue.states import JobState

if TYPE_CHECKING:
    from litestar.openapi.spec import OpenAPI

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


JSON_VALUE_REF = Reference(ref="#/components/schemas/JsonValue")


def _json_object() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        additional_properties=JSON_VALUE_REF,
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
            Schema(type=OpenAPIType.ARRAY, items=JSON_VALUE_REF),
            _json_object(),
        ],
    )
    args = (job_in.properties or {})["args"]
    if isinstance(args, Schema):
        args.additional_properties = JSON_VALUE_REF
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
