"""The scheduler: every worker's share of enqueueing the periodic schedules' jobs.

Every worker runs it (no election: a leader could die with the schedule); each round
reads the schedules that are not paused and the database's clock, works out what each
one owes (:func:`pgqueue.scheduling.ticks.plan_ticks`) and carries that out in one
statement per schedule (``scheduler_advance`` in ``sql/schedules.sql``). Of several
workers planning from the same reading, the first statement moves the schedule on and
the others change nothing; and a tick's job is written only with the tick's row in
``pgqueue.schedule_ticks``, whose primary key (schedule, tick) admits it once. So each
tick gets one job however many workers run, and keeps getting it while any one does.

A round is due when the next tick of any schedule is (by the database's clock), and at
least every ``interval`` seconds, which is how soon schedules added, changed or
resumed elsewhere are seen. The first round, as the worker starts, writes the
schedules declared in its code (``@queue.periodic``), keeping a pause set at runtime.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pgqueue import driver
from pgqueue.dberrors import DATABASE_ERRORS, connection_failed
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire
from pgqueue.scheduling.ticks import MISSED_AFTER, InvalidScheduleError, plan_ticks
from pgqueue.worker.services import LoopService

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Sequence
    from datetime import datetime, timedelta

    import asyncpg

    from pgqueue.scheduling.specs import DueSchedule, ScheduleSpec

# Added to each wait for a tick, so that the round starts once the database's clock
# has reached it (asyncio may wake a little early, and the clocks are read apart).
_WAKE_SLACK = 0.005
# The default longest wait between rounds, in seconds (see the module's text).
DEFAULT_SCHEDULER_INTERVAL = 5.0


class Scheduler(LoopService):
    """Each round: every schedule due, one statement each (see the module's text)."""

    name = "scheduler"

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        declared: Sequence[ScheduleSpec] = (),
        interval: float = DEFAULT_SCHEDULER_INTERVAL,
        stopping: Callable[[], bool] = lambda: False,
        missed_after: timedelta = MISSED_AFTER,
    ) -> None:
        super().__init__(interval)
        self._pool = pool
        self._declared = list(declared)
        self._declared_written = not self._declared
        self._stopping = stopping
        self._missed_after = missed_after
        self._wait = 0.0  # the first round at once
        # Schedules whose stored rule cannot be read, logged once each.
        self._reported: set[tuple[str, str | None, int | None, str]] = set()
        self.enqueued = 0
        self.rounds = 0

    def next_wait(self, rng: random.Random) -> float:  # noqa: ARG002 - no jitter: ticks are exact
        return self._wait

    async def run_round(self) -> None:
        self._wait = self.interval  # after a failed round: the longest wait
        if not self._declared_written:
            try:
                await self.write_declared()
            except DATABASE_ERRORS as exc:
                if connection_failed(exc):
                    raise
                # Refused by the database (say, a name another schedule's constraint
                # forbids): the schedules already stored still get their jobs, and
                # the next round tries again.
                self.log.warning("schedules_declare_failed", error=repr(exc))
        self._wait = await self.tick_round()

    async def write_declared(self) -> None:
        """Write the schedules declared in code (a pause set at runtime is kept)."""
        async with acquire(self._pool) as conn:
            ex = AsyncpgExecutor(conn)
            for spec in self._declared:
                await driver.set_schedule(ex, spec, "code")
        self._declared_written = True
        self.log.info("schedules_declared", schedules=[s.name for s in self._declared])

    async def tick_round(self) -> float:
        """One round; how many seconds until the next one is due."""
        self.rounds += 1
        async with acquire(self._pool) as conn:
            now, schedules = await driver.scheduler_schedules(AsyncpgExecutor(conn))
        read_at = time.monotonic()
        earliest: datetime | None = None
        for schedule in schedules:
            if self._stopping():
                break
            next_run_at = await self._one(schedule, now)
            if next_run_at is not None and (earliest is None or next_run_at < earliest):
                earliest = next_run_at
        if earliest is None:
            return self.interval
        due_in = (earliest - now).total_seconds() - (time.monotonic() - read_at)
        return min(self.interval, max(0.0, due_in + _WAKE_SLACK))

    async def _one(self, schedule: DueSchedule, now: datetime) -> datetime | None:
        """Carry out what ``schedule`` owes at ``now``; when its next tick is due (None:
        its rule cannot be read)."""
        if schedule.rule is None:
            self._report_invalid(schedule, schedule.problem)
            return None
        try:
            plan = plan_ticks(
                schedule.rule,
                schedule.next_run_at,
                now,
                catch_up=schedule.catch_up,
                missed_after=self._missed_after,
            )
        except InvalidScheduleError as exc:  # a cron expression with no tick left
            self._report_invalid(schedule, str(exc))
            return None
        if plan.next_run_at == schedule.next_run_at:  # nothing due
            return plan.next_run_at
        try:
            async with acquire(self._pool) as conn:
                done = await driver.scheduler_advance(AsyncpgExecutor(conn), schedule, plan)
        except DATABASE_ERRORS as exc:
            if connection_failed(exc):
                raise  # the whole round fails, and is tried again
            # This schedule's jobs cannot be written (say, a task name refused by a
            # constraint added since): the others still get theirs.
            self.log.warning("schedule_failed", schedule=schedule.name, error=repr(exc))
            return None
        if done is None:  # another worker moved it first, or it changed meanwhile
            return plan.next_run_at
        if plan.missed_since is not None:
            self.log.warning(
                "schedule_ticks_missed",
                schedule=schedule.name,
                missed_since=plan.missed_since.isoformat(),
                caught_up=schedule.catch_up,
            )
        for tick, job_id in done:
            self.log.info(
                "schedule_enqueued", schedule=schedule.name, tick=tick.isoformat(), job_id=job_id
            )
        self.enqueued += len(done)
        return plan.next_run_at

    def _report_invalid(self, schedule: DueSchedule, problem: str | None) -> None:
        key = (schedule.name, schedule.cron, schedule.every_us, schedule.timezone)
        if key not in self._reported:
            self._reported.add(key)
            self.log.error("schedule_invalid", schedule=schedule.name, problem=problem)

    def counters(self) -> dict[str, int]:
        return {"schedule_jobs": self.enqueued}
