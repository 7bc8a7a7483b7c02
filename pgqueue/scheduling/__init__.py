"""Periodic jobs: schedules that enqueue a task's job at each of their ticks.

- :mod:`pgqueue.scheduling.ticks`: when ticks are due (cron in a time zone, or a fixed
  interval), which of them are missed, and what one scheduler round owes: plain
  functions, shared by every face.
- :mod:`pgqueue.scheduling.specs`: schedules as written and as read back.

Schedules live in ``pgqueue.schedules``; every worker's scheduler
(:mod:`pgqueue.worker.scheduler`) enqueues their due ticks, one job per tick however
many workers run, held by the primary key of ``pgqueue.schedule_ticks``.
"""

from __future__ import annotations

from pgqueue.errors import ScheduleNotFoundError
from pgqueue.scheduling.specs import Schedule, ScheduleSpec, build_schedule, validate_schedule_name
from pgqueue.scheduling.ticks import (
    MISSED_AFTER,
    Cron,
    Every,
    InvalidScheduleError,
    Rule,
    TickPlan,
    next_tick,
    plan_ticks,
)

__all__ = [
    "MISSED_AFTER",
    "Cron",
    "Every",
    "InvalidScheduleError",
    "Rule",
    "Schedule",
    "ScheduleNotFoundError",
    "ScheduleSpec",
    "TickPlan",
    "build_schedule",
    "next_tick",
    "plan_ticks",
    "validate_schedule_name",
]
