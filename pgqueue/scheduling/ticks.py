"""When a periodic schedule's jobs are due: its ticks. Plain functions, no I/O, no clock
of their own (every instant is given), so that every worker computes the same ticks.

A schedule's rule is one of:

- :class:`Cron`: the instants a cron expression names, read in the schedule's time zone
  (through the maintained ``cronsim`` parser: five fields, or six with seconds first).
  Across daylight saving time, as Debian's cron does: a local time that a spring-forward
  skips is due at the first instant after the gap (a daily 02:30 in Europe/Paris runs
  once on 2026-03-29, at 03:00 CEST), and a local time that a fall-back repeats is due
  once, the first time (a daily 02:30 runs once on 2026-10-25, at 02:30 CEST); an
  expression whose hour field is a wildcard ticks through the repeated hour twice, since
  each of those instants is a tick of its own.
- :class:`Every`: every whole multiple of a fixed interval since the Unix epoch, UTC
  (``every=15`` ticks at :00, :15, :30 and :45 of each minute; ``every=3600`` on each
  hour, UTC). Aligned to the epoch rather than to a start time, so that workers started
  at different times agree on every tick. Time zones play no part.

Which due ticks get a job (:func:`plan_ticks`): a tick is *due* once the database's
clock has reached it, and *missed* when a scheduler first sees it due more than
:data:`MISSED_AFTER` after it (no worker ran the scheduler at the time). Every due tick
that is not missed gets a job of its own, run at the tick. Missed ticks get one job
between them when the schedule has ``catch_up`` (run now, recorded under the first
missed tick), or none at all without it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from pgqueue.errors import InvalidJobError

#: A due tick first seen later than this after it is *missed* (see the module's text).
MISSED_AFTER = timedelta(seconds=60)
#: The fewest seconds between two ticks of an ``every`` rule.
EVERY_MIN_SECONDS = 1
#: At most 100 years, as a job's timeout (pgqueue.limits).
EVERY_MAX_SECONDS = 100 * 365 * 86_400
#: Ticks given jobs by one plan at most; the rest are due at once, for the next round.
PLAN_MAX_TICKS = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# cronsim reads its starting point as a wall-clock time, and one inside an hour that a
# fall-back repeats can make it skip ticks or go back in time. From such a time it is
# started this long before (longer than any fold), outside the fold, and its ticks up
# to the instant asked about are dropped.
_CRON_LEAD = timedelta(hours=3)
# Ticks cronsim may yield before the first one after the instant asked about: one a
# minute across _CRON_LEAD, or one a second for a six-field expression, and spare.
_CRON_MAX_STEPS = 3 * 3600 + 1000


class InvalidScheduleError(InvalidJobError):
    """A schedule's rule, time zone or options cannot be used; nothing was written."""


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    """The instants ``expression`` names in ``timezone`` (an IANA name)."""

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        zone_of(self.timezone)
        if not isinstance(self.expression, str) or not 1 <= len(self.expression) <= 200:
            raise InvalidScheduleError("cron must be a cron expression", field="cron")
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=UTC))
        except (CronSimError, ValueError, LookupError, TypeError) as exc:
            raise InvalidScheduleError(
                f"invalid cron expression {self.expression!r}: {exc}", field="cron"
            ) from exc

    def next_after(self, after: datetime) -> datetime:
        zone = zone_of(self.timezone)
        start = after.astimezone(zone)
        if start.replace(fold=1 - start.fold).utcoffset() != start.utcoffset():
            start = (after - _CRON_LEAD).astimezone(zone)  # inside a repeated hour
        try:
            for steps, local in enumerate(CronSim(self.expression, start)):
                tick = local.astimezone(UTC)
                if tick > after:
                    return tick
                if steps > _CRON_MAX_STEPS:
                    break
        except (OverflowError, ValueError):  # past year 9999
            pass
        raise InvalidScheduleError(f"cron {self.expression!r} has no tick after {after}")


@dataclasses.dataclass(frozen=True, slots=True)
class Every:
    """Every whole multiple of ``microseconds`` since the Unix epoch."""

    microseconds: int

    @classmethod
    def of(cls, every: timedelta | float) -> Every:
        """From a timedelta or a number of seconds (whole microseconds)."""
        if isinstance(every, timedelta):
            micro = every // _MICROSECOND
        elif isinstance(every, int | float) and not isinstance(every, bool):
            micro = round(every * 1_000_000) if math.isfinite(every) and abs(every) < 1e13 else -1
        else:
            raise InvalidScheduleError(
                f"every must be a timedelta or seconds, got {every!r}", field="every"
            )
        if not EVERY_MIN_SECONDS * 1_000_000 <= micro <= EVERY_MAX_SECONDS * 1_000_000:
            raise InvalidScheduleError(
                f"every must be from {EVERY_MIN_SECONDS} to {EVERY_MAX_SECONDS} seconds, "
                f"got {every!r}",
                field="every",
            )
        return cls(micro)

    @property
    def interval(self) -> timedelta:
        return timedelta(microseconds=self.microseconds)

    def next_after(self, after: datetime) -> datetime:
        elapsed = (after - _EPOCH) // _MICROSECOND
        return _EPOCH + timedelta(
            microseconds=(elapsed // self.microseconds + 1) * self.microseconds
        )


Rule = Cron | Every


@functools.cache
def time_zone_names() -> frozenset[str]:
    """The time zones a schedule may name: the IANA names of the tz database Python
    reads (the system's, or the tzdata package's), less the system's own aliases
    (``localtime``) and ``Factory``, which PostgreSQL does not take."""
    return frozenset(z for z in available_timezones() if z[:1].isupper() and z != "Factory")


def zone_of(name: str) -> ZoneInfo:
    """The time zone called ``name``; InvalidScheduleError if there is none."""
    if not isinstance(name, str) or name not in time_zone_names():
        raise InvalidScheduleError(f"unknown time zone {name!r}", field="timezone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as exc:
        raise InvalidScheduleError(f"unknown time zone {name!r}", field="timezone") from exc


def rule_of(*, cron: str | None, every: timedelta | float | None, timezone: str = "UTC") -> Rule:
    """The rule of a schedule given exactly one of ``cron`` and ``every``."""
    if cron is not None and every is None:
        return Cron(cron, timezone)
    if every is not None and cron is None:
        zone_of(timezone)  # stored beside the rule: refuse a bad one all the same
        return Every.of(every)
    raise InvalidScheduleError("give a schedule cron or every, exactly one", field="cron")


def next_tick(rule: Rule, after: datetime) -> datetime:
    """The rule's first tick strictly after ``after`` (a timezone-aware instant), in UTC."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    return rule.next_after(after)


@dataclasses.dataclass(frozen=True, slots=True)
class TickPlan:
    """What one scheduler round does with one schedule (see :func:`plan_ticks`)."""

    #: The ticks to give a job, oldest first; the schedule's ledger holds each once.
    ticks: tuple[datetime, ...]
    #: Each tick's job's run_at: the tick itself, or None for now (the catch-up job).
    run_ats: tuple[datetime | None, ...]
    #: The schedule's first tick not handled by this plan.
    next_run_at: datetime
    #: The first missed tick, when ticks were missed (caught up or skipped); else None.
    missed_since: datetime | None = None


def plan_ticks(
    rule: Rule,
    next_run_at: datetime | None,
    now: datetime,
    *,
    catch_up: bool,
    missed_after: timedelta = MISSED_AFTER,
) -> TickPlan:
    """The jobs a schedule whose first unhandled tick is ``next_run_at`` owes at ``now``
    (the database's clock), and its next unhandled tick afterwards.

    ``next_run_at`` None (a new or resumed schedule): nothing owed, and the first tick
    after ``now`` is next. Otherwise every due tick from ``next_run_at`` on: a job each
    for those seen within ``missed_after``; for the older, missed ones, one job between
    them (``catch_up``) or none. At most :data:`PLAN_MAX_TICKS` jobs; ticks beyond are
    left due, for the next plan.
    """
    if next_run_at is None:
        return TickPlan((), (), next_tick(rule, now))
    if next_run_at > now:
        return TickPlan((), (), next_run_at)
    ticks: list[datetime] = []
    run_ats: list[datetime | None] = []
    missed_since = None
    horizon = now - missed_after
    tick = next_run_at
    if tick < horizon:  # missed: no worker ran the scheduler at the time
        missed_since = tick
        if catch_up:
            ticks.append(tick)
            run_ats.append(None)
        tick = next_tick(rule, horizon - _MICROSECOND)  # the first tick not missed
    while tick <= now and len(ticks) < PLAN_MAX_TICKS:
        ticks.append(tick)
        run_ats.append(tick)
        tick = next_tick(rule, tick)
    return TickPlan(tuple(ticks), tuple(run_ats), tick, missed_since)
