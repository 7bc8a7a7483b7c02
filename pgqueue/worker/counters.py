"""The job counters' rollup: a worker's share of keeping ``pgqueue.job_counters``.

Triggers on ``pgqueue.jobs`` write each statement's counter changes to an insert-only
table of deltas (migration 0019); readers sum the totals and the pending deltas, so they
are exact whether or not a rollup ran, but the fewer deltas pending, the cheaper they
read. One worker at a time, the one whose statement gets :data:`pgqueue.locks.COUNTERS`,
folds the deltas into the totals every :data:`ROLLUP_INTERVAL` seconds (jittered). Every
worker runs the service, whatever queues it serves: the counters are global.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgqueue import driver
from pgqueue.dberrors import DATABASE_ERRORS
from pgqueue.executors import AsyncpgExecutor
from pgqueue.locks import COUNTERS
from pgqueue.pools import acquire
from pgqueue.worker.services import LoopService

if TYPE_CHECKING:
    import asyncpg

# About once a second: a busy queue writes a few delta rows per claim and completion
# statement, which readers scan until they are rolled up.
ROLLUP_INTERVAL = 1.0


class CounterRollup(LoopService):
    """Each round: one elected rollup of the pending counter deltas."""

    name = "counter_rollup"
    election = COUNTERS
    jitter = 0.5  # workers started together do not all try at once

    def __init__(self, pool: asyncpg.Pool[Any], *, interval: float = ROLLUP_INTERVAL) -> None:
        super().__init__(interval)
        self._pool = pool
        self.rolled_up = 0

    async def run_round(self) -> None:
        await self.roll_up()

    async def roll_up(self) -> int | None:
        """One elected rollup: how many delta rows moved, None when another worker held
        the lock. Database errors are logged and left for the next round: the readers
        are exact without the rollup."""
        try:
            async with acquire(self._pool) as conn:
                moved = await driver.roll_up_counters(AsyncpgExecutor(conn), COUNTERS.key)
        except DATABASE_ERRORS as exc:
            self.log.warning("counter_rollup_failed", error=repr(exc))
            return None
        if moved:
            self.rolled_up += moved
        return moved

    def counters(self) -> dict[str, int]:
        return {"counter_deltas_rolled_up": self.rolled_up}
