"""The claim loop: claim jobs in batches while there are free slots, sleep when idle.

At most ``concurrency`` jobs are in flight (fewer for an app without async tasks:
:func:`in_flight_limit`), and none is claimed while a job waits for a thread or a
process, so that a worker never holds jobs it cannot start that another could run.
An idle worker sleeps until the listener's
wake-up (an enqueue's NOTIFY), the next delayed job's time, or the poll interval,
whichever comes first; a worker serving a limited queue (pgqueue/flow.py) also wakes
when outcomes of its own jobs have been written (which frees their slots), and sleeps
until a rate limit's next slot rather than polling. Before a claim it hands back the
jobs it holds in the database without knowing it (:class:`HandBack`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import driver
from pgqueue.dberrors import DATABASE_ERRORS, reconnect_delay
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire
from pgqueue.worker.listener import first_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    import asyncpg

    from pgqueue.flow import QueueLimit
    from pgqueue.tasks import Task
    from pgqueue.worker.core import WorkerStats
    from pgqueue.worker.execution import TaskRunner
    from pgqueue.worker.lifecycle import Jobs

# However sure a worker is of what it holds, it checks against the database this often
# (one indexed statement): a job it lost track of, whatever the cause, goes back to the
# queue within this time instead of staying running under a live worker for good.
RECONCILE_SECONDS = 30.0
# A claim that fails with one of these claimed nothing: back off and claim again.
CLAIM_RETRY_ERRORS = DATABASE_ERRORS


def in_flight_limit(
    tasks: Iterable[Task[Any, Any]],
    queues: Iterable[str],
    *,
    concurrency: int,
    threads: int,
    processes: int,
) -> int:
    """How many jobs the worker may hold at once. ``concurrency`` if any of the tasks
    of the queues it serves (else of the app) runs on the event loop; otherwise no more
    than their threads and processes can run, so that a worker of plain functions does
    not claim jobs that would only wait in it."""
    every = list(tasks)
    served = set(queues)
    mine = [t for t in every if t.queue in served] or every
    if not mine or any(t.is_async and not (t.transactional or t.process) for t in mine):
        return concurrency
    limit = threads if any(not t.process for t in mine) else 0
    if any(t.process for t in mine):
        limit += processes
    return max(1, min(concurrency, limit))


async def apply_declared_limits(
    pool: asyncpg.Pool[Any], limits: Mapping[str, QueueLimit], queues: Iterable[str]
) -> None:
    """Write the limits the app declares (``queue.limit(...)``) for the queues this
    worker serves, as it starts: the code's limits replace any set at runtime. A
    failure is logged and the worker goes on with the limits the database has."""
    log = structlog.get_logger("pgqueue.worker")
    for queue in queues:
        declared = limits.get(queue)
        if declared is None:
            continue
        try:
            async with acquire(pool) as conn:
                await driver.set_queue_limit(AsyncpgExecutor(conn), declared)
        except CLAIM_RETRY_ERRORS as exc:
            log.warning("queue_limit_not_applied", queue=queue, error=repr(exc))
            continue
        log.info(
            "queue_limit_applied",
            queue=queue,
            concurrency=declared.concurrency,
            rate=None if declared.rate is None else str(declared.rate),
            key_concurrency=declared.key_concurrency,
            key_rate=None if declared.key_rate is None else str(declared.key_rate),
            keys=sorted(declared.keys),
        )


class HandBack:
    """Jobs the database says this worker holds, but that it is neither running nor
    about to report on: claimed by a claim whose answer never arrived, or whose outcome
    was lost. They go back as if never claimed: before the next claim after such a
    loss, and every :data:`RECONCILE_SECONDS` whatever happened."""

    def __init__(self, wake: asyncio.Event, stats: WorkerStats) -> None:
        self._wake = wake
        self._stats = stats
        self._log = structlog.get_logger("pgqueue.worker")
        self.unsure = False
        self._due_at = time.monotonic() + RECONCILE_SECONDS

    def outcome_lost(self) -> None:
        """Some outcome will never be written (or a claim's answer was lost): hand back
        before the next claim."""
        self.unsure = True
        self._wake.set()

    def due(self) -> bool:
        return self.unsure or time.monotonic() >= self._due_at

    async def run(
        self, ex: AsyncpgExecutor, worker_id: str, known: Callable[[], Iterable[int]]
    ) -> list[int]:
        """Release what the database says we hold beyond ``known()``; the released ids."""
        # Cleared before the snapshot of what we know, not after the release: an outcome
        # lost while the release is in flight (a job among ``known`` now, unknown by the
        # time the release answers) must bring another pass, or its job would stay
        # running under this live worker for good. A failed release sets it again.
        unsure, self.unsure = self.unsure, False
        released = await driver.release_unknown(ex, worker_id, list(known()))
        self._due_at = time.monotonic() + RECONCILE_SECONDS
        if released:
            self._stats.released += len(released)
            self._log.warning(
                "unknown_jobs_released",
                job_ids=released,
                reason="a claim or an outcome was lost" if unsure else "periodic check",
            )
        return released


class Claimer:
    """The claim loop of one running worker."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        jobs: Jobs,
        runner: TaskRunner,
        *,
        queues: list[str],
        concurrency: int,
        batch_size: int,
        poll_interval: float,
        worker_id: Callable[[], str],
        stats: WorkerStats,
        hand_back: HandBack,
        stop: asyncio.Event,
        wake: asyncio.Event,
        registered: asyncio.Event,
        written: asyncio.Event | None = None,
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._runner = runner
        self._queues = queues
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._worker_id = worker_id
        self._stats = stats
        self._hand_back = hand_back
        self._stop = stop
        self._wake = wake
        self._registered = registered
        # Set when outcomes of ours were written (Completer.written): what frees a slot of
        # a limited queue in the database, where the claim counts them.
        self._written = written or asyncio.Event()
        # Whether any of our queues was limited, when the database last said.
        self._limited = False
        # Whether the last claim got all it asked for (a backlog waits).
        self._full = False
        # A limited queue's claims take their turns under its lock, each paying a fixed
        # cost (and a commit) while the others wait: with a backlog, a worker claims for
        # a quarter of a batch at least, rather than for each slot as it frees.
        self._min_claim = max(1, min(batch_size, concurrency) // 4)
        self._log = structlog.get_logger("pgqueue.worker")
        # Set while the worker is idle: its last claim found less than it could take.
        self.idle = asyncio.Event()

    async def run(self) -> None:
        """Claim until stopped."""
        stop, wake, slot_freed = self._stop, self._wake, self._jobs.slot_freed
        running = self._jobs.running
        failures = 0
        while not stop.is_set():
            if not self._registered.is_set():
                await first_of(self._registered, stop, timeout=None)
                continue
            if self._runner.waiting:  # jobs claimed but not started: take no more
                await first_of(self._runner.unblocked, stop, timeout=None)
                continue
            want = self._want(len(running))
            if want <= 0:
                slot_freed.clear()
                await first_of(slot_freed, stop, timeout=None)
                continue
            # Clear before claiming: a NOTIFY that lands during the claim must not be lost.
            wake.clear()
            self._written.clear()
            worker_id = self._worker_id()
            try:
                async with acquire(self._pool) as conn:
                    ex = AsyncpgExecutor(conn)
                    if self._hand_back.due():
                        await self._hand_back.run(ex, worker_id, self._jobs.known_ids)
                    jobs, self._limited = await driver.claim_flow(
                        ex, self._queues, want, worker_id, limited=self._limited
                    )
                failures = 0
            except CLAIM_RETRY_ERRORS as exc:
                # A lost connection, or an error of the server's (a statement timeout, a
                # missing schema). The claim may even have committed with its answer
                # lost: before the next one, hand back whatever we hold without knowing.
                self._hand_back.unsure = True
                failures += 1
                delay = reconnect_delay(failures)
                self._log.warning("claim_failed", error=repr(exc), retry_in=round(delay, 3))
                await first_of(stop, timeout=delay)
                continue
            if stop.is_set():
                await self.release([j.id for j in jobs], worker_id)
                return
            self._full = len(jobs) == want
            self._stats.claimed += len(jobs)
            for job in jobs:
                self._jobs.start(job)
            if len(jobs) < want:
                await self._sleep(claimed=len(jobs))

    def _want(self, running: int) -> int:
        """How many jobs to claim now; 0: wait for a slot to free first."""
        free = self._concurrency - running
        if self._limited and self._full and free < self._min_claim:
            return 0
        return min(free, self._batch_size)

    async def _sleep(self, claimed: int) -> None:
        """Idle: until a wake-up, the next job or rate slot due, or the poll."""
        if claimed and self._limited:
            # A limited queue's claim that took some jobs: the next chance is when their
            # outcomes are written, which is sooner than anything the database could say
            # (and asking would cost a round trip per cycle of the limit's slots).
            idle_for, limited = self._poll_interval, True
        else:
            idle_for, limited = await self._idle_timeout()
            self._limited = limited
        self.idle.set()
        if limited:
            # A limited queue's due jobs wait for a slot: one of ours frees one once its
            # outcome is written (another worker's is seen at an enqueue or the poll).
            await first_of(self._wake, self._stop, self._written, timeout=idle_for)
        else:
            await first_of(self._wake, self._stop, timeout=idle_for)
        self.idle.clear()

    async def _idle_timeout(self) -> tuple[float, bool]:
        """How long to sleep: until the poll comes round, or until the next delayed job
        or rate-limit slot is due; and whether any of the queues is limited."""
        try:
            async with acquire(self._pool) as conn:
                wait = await driver.next_claim_wait(AsyncpgExecutor(conn), self._queues)
        except CLAIM_RETRY_ERRORS:
            return self._poll_interval, False  # the next claim will say what is wrong
        if wait.due_in is None:
            return self._poll_interval, wait.limited
        return min(max(wait.due_in, 0.005), self._poll_interval), wait.limited

    async def release(self, ids: list[int], worker_id: str | None = None) -> None:
        """Claimed but never started (the stop came during the claim, or while they
        waited for a thread): hand them back, as if never claimed."""
        if not ids:
            return
        try:
            async with acquire(self._pool) as conn:
                await driver.release(AsyncpgExecutor(conn), ids, worker_id or self._worker_id())
        except CLAIM_RETRY_ERRORS as exc:  # handed back by the rescue once we deregister
            self._log.warning("jobs_release_failed", job_ids=ids, error=repr(exc))
            return
        self._stats.released += len(ids)
        self._log.info("jobs_released", job_ids=ids)
