"""Schedules as written (:class:`ScheduleSpec`, checked by :func:`build_schedule`) and as
read back (:class:`Schedule`, a row of the ``pgqueue.schedule_status`` view)."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pgqueue.job_options import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE
from pgqueue.rows import decode_json
from pgqueue.scheduling.ticks import Cron, Every, InvalidScheduleError, Rule, rule_of
from pgqueue.validation import build_job

if TYPE_CHECKING:
    from datetime import datetime

ScheduleSource = Literal["code", "runtime"]

SCHEDULE_NAME_MAX = 200
SCHEDULE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")  # SCHEDULE_NAME_MAX


def validate_schedule_name(name: object) -> str:
    if not isinstance(name, str) or SCHEDULE_NAME_RE.fullmatch(name) is None:
        raise InvalidScheduleError(
            f"invalid schedule name {name!r}: 1-200 characters from A-Z a-z 0-9 _ . : -, "
            "not starting with . : or -",
            field="name",
        )
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A checked schedule, ready to write: its name, its rule (and time zone), and the
    job each tick enqueues. Build one with :func:`build_schedule`."""

    name: str
    task: str
    rule: Rule
    timezone: str
    args_json: str
    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
    catch_up: bool

    def params(self, source: ScheduleSource) -> tuple[Any, ...]:
        """Parameters of the ``set_schedule`` statement."""
        cron = self.rule.expression if isinstance(self.rule, Cron) else None
        every_us = self.rule.microseconds if isinstance(self.rule, Every) else None
        return (
            self.name,
            self.task,
            cron,
            every_us,
            self.args_json,
            self.queue,
            self.priority,
            self.max_attempts,
            self.timezone,
            self.catch_up,
            self.timeout,
            source,
        )


def build_schedule(
    name: str,
    task: str,
    *,
    cron: str | None = None,
    every: timedelta | float | None = None,
    timezone: str = "UTC",
    args: dict[str, Any] | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    catch_up: bool = False,
) -> ScheduleSpec:
    """Check every field of a schedule (``InvalidScheduleError``, an ``InvalidJobError``
    naming the field): exactly one of ``cron`` (a cron expression, read in ``timezone``)
    and ``every`` (seconds or a timedelta, at least a second), and the job each tick
    enqueues, checked as any job is."""
    validate_schedule_name(name)
    rule = rule_of(cron=cron, every=every, timezone=timezone)
    job = build_job(
        task, args, queue=queue, priority=priority, max_attempts=max_attempts, timeout=timeout
    )
    if not isinstance(catch_up, bool):
        raise InvalidScheduleError(f"catch_up must be a bool, got {catch_up!r}", field="catch_up")
    return ScheduleSpec(
        name=name,
        task=job.task,
        rule=rule,
        timezone=timezone,
        args_json=job.args_json,
        queue=job.queue,
        priority=job.priority,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        catch_up=catch_up,
    )


class Schedule(NamedTuple):
    """A schedule as stored, with its next tick and its last run."""

    name: str
    task: str
    queue: str
    cron: str | None
    every: timedelta | None
    timezone: str
    catch_up: bool
    paused: bool
    source: ScheduleSource
    # The first tick not yet handled; None until a scheduler round works it out (just
    # added from SQL, or resumed).
    next_run_at: datetime | None
    # The last job enqueued for it: the tick it was for, when, whether by hand (a
    # trigger), its id and its state now (None once pruned); all None before the first.
    last_tick: datetime | None
    last_enqueued_at: datetime | None
    last_manual: bool | None
    last_job_id: int | None
    last_job_state: str | None
    args: dict[str, Any]
    priority: int
    max_attempts: int
    timeout: float | None
    created_at: datetime
    updated_at: datetime


def schedule_from_row(row: Any) -> Schedule:
    """A ``schedule_status`` row as the statements in ``schedules.sql`` select it."""
    every_us = row["every_us"]
    return Schedule(
        name=row["name"],
        task=row["task"],
        queue=row["queue"],
        cron=row["cron"],
        every=None if every_us is None else timedelta(microseconds=every_us),
        timezone=row["timezone"],
        catch_up=row["catch_up"],
        paused=row["paused"],
        source=row["source"],
        next_run_at=row["next_run_at"],
        last_tick=row["last_tick"],
        last_enqueued_at=row["last_enqueued_at"],
        last_manual=row["last_manual"],
        last_job_id=row["last_job_id"],
        last_job_state=row["last_job_state"],
        args=decode_json(row["args"]),
        priority=row["priority"],
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class DueSchedule:
    """What a scheduler round reads of a schedule that is not paused."""

    name: str
    rule: Rule | None  # None: its stored rule cannot be read (a bad cron from SQL)
    cron: str | None
    every_us: int | None
    timezone: str
    catch_up: bool
    next_run_at: datetime | None
    problem: str | None = None  # why rule is None


def due_schedule_from_row(row: Any) -> DueSchedule:
    cron, every_us, timezone = row["cron"], row["every_us"], row["timezone"]
    try:
        rule: Rule | None = rule_of(
            cron=cron,
            every=None if every_us is None else timedelta(microseconds=every_us),
            timezone=timezone,
        )
        problem = None
    except InvalidScheduleError as exc:
        rule, problem = None, str(exc)
    return DueSchedule(
        name=row["name"],
        rule=rule,
        cron=cron,
        every_us=every_us,
        timezone=timezone,
        catch_up=row["catch_up"],
        next_run_at=row["next_run_at"],
        problem=problem,
    )
