"""The schedule endpoints' bodies (service/schedules.py), as msgspec structs documented
with the same rules the library checks (see schemas.py)."""

from __future__ import annotations

from datetime import datetime  # noqa: TC003 - msgspec needs it at runtime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar.openapi.spec import OpenAPIType, Reference, Schema

from pgqueue.limits import (
    MAX_ATTEMPTS_LIMIT,
    MAX_SECONDS,
    MIN_TIMEOUT_SECONDS,
    PRIORITY_MAX,
    PRIORITY_MIN,
)
from pgqueue.scheduling.specs import SCHEDULE_NAME_MAX, SCHEDULE_NAME_RE
from pgqueue.scheduling.ticks import EVERY_MAX_SECONDS, time_zone_names

if TYPE_CHECKING:
    from litestar.openapi.spec import OpenAPI

    from pgqueue.scheduling.specs import Schedule

from pgqueue.job_options import NO_NUL_PATTERN, QUEUE_NAME_RULES, TASK_NAME_RULES

from .schemas import JSON_VALUE_REF, documented

SCHEDULE_NAME_RULES: dict[str, Any] = {
    "pattern": f"^{SCHEDULE_NAME_RE.pattern}$",
    "minLength": 1,
    "maxLength": SCHEDULE_NAME_MAX,
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
                variant.additional_properties = JSON_VALUE_REF
                variant.property_names = Schema(pattern=NO_NUL_PATTERN)
