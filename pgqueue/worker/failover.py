"""A worker across a failover: its claims wait, and runs of lost claims are given up.

See :mod:`pgqueue.timeline` for why. :class:`FailoverGuard` lives on the worker's loop:
its pool notes the timeline at each new connection (:meth:`FailoverGuard.on_connect`,
the pool's ``init``: before any claim there), the heartbeat thread at each beat
(:meth:`FailoverGuard.noted_from_thread`). On a timeline change it closes
:attr:`FailoverGuard.claims_open` for as long as the database says, and checks the
running jobs against the database until that works once; the heartbeat withholds its
renewals until then (:meth:`FailoverGuard.checked_on`), so a worker that cannot check
fences itself instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import driver
from pgqueue.dberrors import reconnect_delay
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire
from pgqueue.timeline import Timeline, TimelineWatch
from pgqueue.worker.claiming import CLAIM_RETRY_ERRORS
from pgqueue.worker.listener import first_of

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

    from pgqueue.worker.lifecycle import Jobs

LOST_CLAIM = "its claim was lost in a failover: the new primary has it queued"


class FailoverGuard:
    def __init__(self) -> None:
        self.watch = TimelineWatch()
        #: Set while claims may go on; cleared during a hold.
        self.claims_open = asyncio.Event()
        self.claims_open.set()
        self.failovers = 0
        self._loop = asyncio.get_running_loop()
        self._log = structlog.get_logger("pgqueue.worker")
        self._reopen: asyncio.TimerHandle | None = None
        self._checking: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._pool: asyncpg.Pool[Any] | None = None
        self._jobs: Jobs | None = None
        self._worker_id: Callable[[], str] = str
        self._on_checked: Callable[[], None] = lambda: None

    def attach(
        self,
        pool: asyncpg.Pool[Any],
        jobs: Jobs,
        *,
        worker_id: Callable[[], str],
        stop: asyncio.Event,
        on_checked: Callable[[], None],
    ) -> None:
        """The running worker's parts (its pool notes timelines before they exist: the
        first note, when nothing runs yet). ``on_checked``: the running jobs were checked
        against the latest timeline (the heartbeat renews what it withheld)."""
        self._pool, self._jobs, self._stop = pool, jobs, stop
        self._worker_id, self._on_checked = worker_id, on_checked

    async def on_connect(self, conn: asyncpg.Connection[Any]) -> None:
        """The pool's ``init``: note the timeline on each new connection."""
        self.noted(await driver.note_timeline(AsyncpgExecutor(conn)))

    def noted_from_thread(self, noted: Timeline) -> None:
        self._loop.call_soon_threadsafe(self.noted, noted)

    def checked_on(self, timeline: int) -> bool:
        """Whether the running jobs were checked against ``timeline`` (any thread)."""
        return self.watch.checked == timeline

    def noted(self, noted: Timeline) -> None:
        now = time.monotonic()
        previous = self.watch.checked
        must_check = self.watch.note(noted, now)
        held_for = self.watch.held_for(now)
        if held_for > 0:
            self._hold(held_for)
        if must_check and (self._checking is None or self._checking.done()):
            self.failovers += 1
            self._log.warning(
                "failover_detected",
                previous_timeline=previous,
                timeline=noted.timeline,
                claims_held_for=round(held_for, 3),
                running=len(self._jobs.running) if self._jobs else 0,
            )
            self._checking = asyncio.create_task(
                self._check(noted.timeline), name="pgqueue-failover-check"
            )

    def close(self) -> None:
        if self._reopen is not None:
            self._reopen.cancel()
        if self._checking is not None:
            self._checking.cancel()

    def _hold(self, seconds: float) -> None:
        """Close claims until the watch's hold ends (``seconds`` from now, or later).
        Noted at every beat and every new connection, a hold is seen many times while
        it runs: one timer serves them all, and :meth:`_open` follows an end that a
        later note moved on."""
        if self.claims_open.is_set():
            self._log.warning("claims_held", seconds=round(seconds, 3), reason="timeline changed")
        self.claims_open.clear()
        if self._reopen is None:
            self._reopen = self._loop.call_later(seconds, self._open)

    def _open(self) -> None:
        self._reopen = None
        left = self.watch.held_for(time.monotonic())
        if left > 0:  # a note since the timer was set moved the end on
            self._reopen = self._loop.call_later(left, self._open)
            return
        self._log.info("claims_resumed")
        self.claims_open.set()

    async def _check(self, timeline: int) -> None:
        """Give up the running jobs the database no longer shows as ours; until it works
        (meanwhile the heartbeat renews nothing, so a worker that never gets through
        fences itself and gives up all of them)."""
        failures = 0
        while True:
            jobs, pool, stop = self._jobs, self._pool, self._stop
            if jobs is None or pool is None or stop is None or stop.is_set():
                return
            running = list(jobs.running)
            try:
                async with acquire(pool) as conn:
                    lost = await driver.claims_lost_among(
                        AsyncpgExecutor(conn), running, self._worker_id()
                    )
            except CLAIM_RETRY_ERRORS as exc:
                failures += 1
                delay = reconnect_delay(failures)
                self._log.warning("failover_check_failed", error=repr(exc), retry_in=delay)
                await first_of(stop, timeout=delay)
                continue
            break
        if lost:
            self._log.warning("lost_claims_given_up", job_ids=lost, timeline=timeline)
            jobs.abandon(lost, LOST_CLAIM)
        # A note of a later timeline since starts a check of its own once this one ends.
        self.watch.checked = timeline
        self._on_checked()
