"""The tick maths of periodic schedules (pgqueue.scheduling.ticks), with a fixed clock:
no database, no sleeping. Daylight saving time in Europe/Paris: 2026-03-29 02:00 CET
jumps to 03:00 CEST (01:00 UTC); 2026-10-25 03:00 CEST falls back to 02:00 CET
(01:00 UTC), so 02:00-02:59 happens twice."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from pgqueue import InvalidJobError
from pgqueue.scheduling import (
    MISSED_AFTER,
    Cron,
    Every,
    InvalidScheduleError,
    build_schedule,
    next_tick,
    plan_ticks,
)

PARIS = ZoneInfo("Europe/Paris")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def ticks_between(rule, start: datetime, end: datetime) -> list[datetime]:
    out, tick = [], next_tick(rule, start)
    while tick <= end:
        out.append(tick)
        tick = next_tick(rule, tick)
    return out


def run_scheduler_every_minute(rule, start: datetime, end: datetime) -> list[datetime]:
    """What a scheduler polling once a minute with a fixed clock enqueues."""
    enqueued: list[datetime] = []
    next_run_at = None
    now = start
    while now <= end:
        plan = plan_ticks(rule, next_run_at, now, catch_up=False)
        enqueued.extend(plan.ticks)
        next_run_at = plan.next_run_at
        now += timedelta(minutes=1)
    return enqueued


def local_dates(ticks: list[datetime]) -> list[date]:
    return [t.astimezone(PARIS).date() for t in ticks]


def test_daily_0230_runs_once_on_the_spring_forward_day():
    rule = Cron("30 2 * * *", "Europe/Paris")
    ticks = ticks_between(rule, utc(2026, 3, 27, 12), utc(2026, 3, 31, 12))
    assert ticks == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST, once
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]
    enqueued = run_scheduler_every_minute(rule, utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    assert local_dates(enqueued) == [date(2026, 3, 29), date(2026, 3, 30)]


def test_daily_0230_runs_once_on_the_fall_back_day():
    rule = Cron("30 2 * * *", "Europe/Paris")
    ticks = ticks_between(rule, utc(2026, 10, 23, 12), utc(2026, 10, 27, 12))
    assert ticks == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST); not the second (CET)
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]
    enqueued = run_scheduler_every_minute(rule, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12))
    assert local_dates(enqueued) == [date(2026, 10, 25), date(2026, 10, 26)]


def test_hourly_ticks_through_the_repeated_hour_each_instant_once():
    rule = Cron("0 * * * *", "Europe/Paris")
    ticks = ticks_between(rule, utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 3, 30))
    assert ticks == [utc(2026, 10, 24, 23), *(utc(2026, 10, 25, h) for h in range(4))]
    assert len(set(ticks)) == len(ticks)


@pytest.mark.parametrize(
    ("expression", "day"),
    [
        ("30 2 * * *", utc(2026, 10, 24, 20)),
        ("*/20 * * * *", utc(2026, 10, 24, 20)),
        ("15 1-3 * * *", utc(2026, 10, 24, 20)),
        ("30 2 * * *", utc(2026, 3, 28, 20)),
        ("*/20 * * * *", utc(2026, 3, 28, 20)),
        ("15 1-3 * * *", utc(2026, 3, 28, 20)),
    ],
)
def test_every_worker_finds_the_same_next_tick_wherever_it_starts(expression, day):
    """A worker asking from any instant (inside the repeated hour too) gets the tick
    that follows in the one sequence of ticks, never an earlier or a skipped one."""
    rule = Cron(expression, "Europe/Paris")
    # The reference: one run of cronsim, started a day before, far from any fold.
    sequence = []
    for local in CronSim(expression, (day - timedelta(days=1)).astimezone(PARIS)):
        sequence.append(local.astimezone(UTC))
        if sequence[-1] > day + timedelta(days=2):
            break
    for minute in range(0, 11 * 60, 7):
        after = day + timedelta(minutes=minute, seconds=13)
        expected = next(t for t in sequence if t > after)
        assert next_tick(rule, after) == expected, after


def test_every_ticks_are_aligned_to_the_epoch_whatever_the_start():
    rule = Every.of(15)
    assert next_tick(rule, utc(2026, 5, 1, 10, 0, 7)) == utc(2026, 5, 1, 10, 0, 15)
    assert next_tick(rule, utc(2026, 5, 1, 10, 0, 15)) == utc(2026, 5, 1, 10, 0, 30)
    assert Every.of(timedelta(seconds=15)) == rule
    hourly = Every.of(timedelta(hours=1))
    assert next_tick(hourly, utc(2026, 5, 1, 10, 59, 59)) == utc(2026, 5, 1, 11)
    subsecond = datetime(2026, 5, 1, 10, 0, 44, 999_999, tzinfo=UTC)
    assert next_tick(rule, subsecond) == utc(2026, 5, 1, 10, 0, 45)


def test_a_new_schedule_starts_at_its_first_tick_after_now():
    rule = Every.of(10)
    plan = plan_ticks(rule, None, utc(2026, 5, 1, 10, 0, 3), catch_up=True)
    assert plan.ticks == ()
    assert plan.next_run_at == utc(2026, 5, 1, 10, 0, 10)


def test_nothing_is_owed_before_the_next_tick():
    next_run_at = utc(2026, 5, 1, 10, 0, 10)
    plan = plan_ticks(Every.of(10), next_run_at, utc(2026, 5, 1, 10, 0, 9), catch_up=True)
    assert (plan.ticks, plan.next_run_at) == ((), utc(2026, 5, 1, 10, 0, 10))


def test_due_ticks_within_the_grace_get_a_job_each_run_at_their_tick():
    rule = Every.of(10)
    now = utc(2026, 5, 1, 10, 0, 35)
    plan = plan_ticks(rule, utc(2026, 5, 1, 10, 0, 10), now, catch_up=False)
    expected = (utc(2026, 5, 1, 10, 0, 10), utc(2026, 5, 1, 10, 0, 20), utc(2026, 5, 1, 10, 0, 30))
    assert plan.ticks == expected
    assert plan.run_ats == expected
    assert plan.next_run_at == utc(2026, 5, 1, 10, 0, 40)
    assert plan.missed_since is None


def test_missed_ticks_are_caught_up_with_one_job():
    rule = Cron("0 * * * *")
    now = utc(2026, 5, 1, 10, 0, 30)  # down since 06:00: 06, 07, 08, 09 missed; 10 on time
    plan = plan_ticks(rule, utc(2026, 5, 1, 6), now, catch_up=True)
    assert plan.ticks == (utc(2026, 5, 1, 6), utc(2026, 5, 1, 10))
    assert plan.run_ats == (None, utc(2026, 5, 1, 10))  # the catch-up job runs now
    assert plan.missed_since == utc(2026, 5, 1, 6)
    assert plan.next_run_at == utc(2026, 5, 1, 11)


def test_missed_ticks_are_skipped_without_catch_up():
    rule = Cron("0 * * * *")
    now = utc(2026, 5, 1, 10, 0, 30)
    plan = plan_ticks(rule, utc(2026, 5, 1, 6), now, catch_up=False)
    assert plan.ticks == (utc(2026, 5, 1, 10),)
    assert plan.missed_since == utc(2026, 5, 1, 6)
    only_missed = plan_ticks(rule, utc(2026, 5, 1, 6), utc(2026, 5, 1, 9, 30), catch_up=False)
    assert (only_missed.ticks, only_missed.next_run_at) == ((), utc(2026, 5, 1, 10))


def test_a_tick_is_missed_only_once_older_than_the_grace():
    rule = Every.of(60)
    tick = utc(2026, 5, 1, 10, 0)
    late = plan_ticks(rule, tick, tick + MISSED_AFTER, catch_up=False)
    assert late.ticks == (tick, tick + timedelta(minutes=1))
    missed = plan_ticks(rule, tick, tick + MISSED_AFTER + timedelta(seconds=1), catch_up=False)
    assert missed.ticks == (tick + timedelta(minutes=1),)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cron": "61 * * * *"},
        {"cron": "not cron"},
        {"cron": "0 3 * * *", "timezone": "Mars/Olympus"},
        {"every": 0.5},
        {"every": float("nan")},
        {"every": True},
        {"cron": "0 3 * * *", "every": 60},
        {},
        {"every": 60, "args": {"x": float("inf")}},
        {"every": 60, "queue": "bad queue"},
    ],
)
def test_bad_schedules_are_refused_naming_the_field(kwargs):
    with pytest.raises(InvalidJobError) as info:
        build_schedule("nightly", "app.report", **kwargs)
    assert isinstance(info.value, InvalidJobError)
    assert info.value.field


def test_bad_rules_are_schedule_errors():
    for kwargs in ({"cron": "61 * * * *"}, {"every": 0.5}, {"every": 60, "timezone": "X/Y"}):
        with pytest.raises(InvalidScheduleError):
            build_schedule("nightly", "app.report", **kwargs)


def test_bad_schedule_names_are_refused():
    for name in ["", "-x", "a b", "x" * 201, 3]:
        with pytest.raises(InvalidScheduleError):
            build_schedule(name, "app.report", every=60)  # type: ignore[arg-type]
