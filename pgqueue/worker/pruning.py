"""Pruning: a worker's share of enforcing its retention (:class:`pgqueue.Retention`).

One worker at a time prunes, the one whose batch statement gets the pruning lock
(:data:`pgqueue.locks.PRUNE`), every ``prune_interval`` seconds (jittered), in batches
of :data:`~pgqueue.retention.PRUNE_BATCH` rows, and only the queues it serves: its
retention is its own setting, not that of another group of workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgqueue import driver
from pgqueue.dberrors import DATABASE_ERRORS
from pgqueue.executors import AsyncpgExecutor
from pgqueue.locks import PRUNE
from pgqueue.pools import acquire
from pgqueue.retention import PRUNE_BATCH
from pgqueue.worker.services import LoopService

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncpg

    from pgqueue.retention import Retention

# Batches per round: a huge backlog is worked off over several rounds rather than in
# one long burst.
ROUND_BATCHES = 50


class Pruner(LoopService):
    """Each round: batches until the elected statement finds nothing more to delete,
    or another worker holds the lock."""

    name = "prune"
    election = PRUNE
    jitter = 0.5  # workers started together do not all try at once

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        retention: Retention,
        *,
        interval: float,
        stopping: Callable[[], bool],
        queues: Sequence[str] | None = None,
    ) -> None:
        super().__init__(interval)
        self._pool = pool
        self._retention = retention
        self._queues = queues
        self._stopping = stopping
        self.pruned = 0

    async def run_round(self) -> None:
        await self.prune_round()

    async def prune_round(self) -> int:
        """One round of batches; how many jobs went. Database errors are logged and
        left for the next round: pruning can always wait."""
        total = 0
        params = self._retention.params(PRUNE_BATCH, self._queues)
        try:
            for _ in range(ROUND_BATCHES):
                if self._stopping():
                    break
                async with acquire(self._pool) as conn:
                    gone = await driver.prune_elected(AsyncpgExecutor(conn), params, PRUNE.key)
                if gone is None:  # another worker is pruning
                    break
                total += gone
                if gone < PRUNE_BATCH:
                    break
        except DATABASE_ERRORS as exc:
            self.log.warning("prune_failed", error=repr(exc), pruned=total)
        if total:
            self.pruned += total
            self.log.info("jobs_pruned", count=total)
        return total

    def counters(self) -> dict[str, int]:
        return {"pruned": self.pruned}
