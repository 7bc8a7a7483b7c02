"""The claim loop: claim jobs in batches while there are free slots, sleep when idle.

At most ``concurrency`` jobs are in flight (fewer for an app without async tasks:
:func:`in_flight_limit`), and none is claimed while a job waits for a thread or a
process, so that a worker never holds jobs it cannot start that another could run.
An idle worker sleeps until the listener's
wake-up (an enqueue's NOTIFY), the next delayed job's time, or the poll interval,
whichever comes first, and sleeps until a rate limit's next slot rather than polling.
Before a claim it hands back the jobs it holds in the database without knowing it
(:class:`HandBack`).

A worker serving a limited queue (pgqueue/flow.py) other than a rate-only one refills
the slots its own jobs free in the statement that writes their outcomes
(:meth:`Claimer.refill`, called by the Completer): the slots are freed and taken again
at one commit, in one round trip. A
slot of a limited queue is free only once its job's outcome is written, so such a
worker waits for writes (``Completer.written``), not for its jobs to end.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import driver
from pgqueue.claim_cursor import ClaimCursor, ClaimKey, DueAnswer
from pgqueue.dberrors import DATABASE_ERRORS, reconnect_delay
from pgqueue.executors import AsyncpgExecutor
from pgqueue.hooks import ClaimRound
from pgqueue.pools import acquire
from pgqueue.worker.completer import Refill
from pgqueue.worker.listener import first_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    import asyncpg

    from pgqueue.flow import QueueLimit
    from pgqueue.hooks import ClaimKind, Hooks
    from pgqueue.jobs import ClaimedJob
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

# The least number of unwritten outcomes at which a worker stops claiming (see
# Claimer.max_unwritten).
MIN_UNWRITTEN_CAP = 1_000


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
        claims_open: asyncio.Event | None = None,
        unwritten: Callable[[], int] = lambda: 0,
        hooks: Hooks | None = None,
    ) -> None:
        self._pool = pool
        self._hooks = hooks  # the app's, for its claim hooks
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
        # Cleared while claims are held after a failover (pgqueue.worker.failover).
        if claims_open is None:
            claims_open = asyncio.Event()
            claims_open.set()
        self._claims_open = claims_open
        # Outcomes not yet written (Completer.unwritten): past max_unwritten, claims wait
        # for the writes. Their jobs are still running in the database, and a write that
        # falls behind (a slow disk, a lock) must not let a worker claim without end
        # while the outcomes pile up in its memory.
        self._unwritten = unwritten
        self.max_unwritten = max(MIN_UNWRITTEN_CAP, 10 * batch_size, 2 * concurrency)
        self._waiting_for_writes = False
        # Set when outcomes of ours were written (Completer.written): what frees a slot of
        # a limited queue in the database, where the claim counts them.
        self._written = written or asyncio.Event()
        # Whether any of our queues was limited, when the database last said; and
        # whether any limited one is claimed under its lock (not rate-only), the only
        # kind whose slots a refill takes again as the outcomes free them.
        self._limited = False
        self._locked = True
        # Whether the last claim got all it asked for (a backlog waits).
        self._full = False
        # Slots asked for by claims in flight (a refill rides on a write meanwhile).
        self._reserved = 0
        # Claim round trips of this worker's own (not refills): a worker held by a
        # limit makes few, however long it waits (tests count them).
        self.claims = 0
        # Round trips asking how long to sleep (an idle worker's, once per sleep).
        self.idle_checks = 0
        # Set by a refill that found no room: the sleep asks the database anew when the
        # next slot is due (a rate's window), instead of claiming to find out.
        self._recheck = asyncio.Event()
        # Refills handed back while stopping, kept until done.
        self._releases: set[asyncio.Task[None]] = set()
        # A limited queue's claims take their turns under its lock, each paying a fixed
        # cost (and a commit) while the others wait: with a backlog, a worker claims for
        # a quarter of a batch at least, rather than for each slot as it frees.
        self._min_claim = max(1, min(batch_size, concurrency) // 4)
        # Where each queue's claim starts, past the entries its last claim left behind.
        self._cursor = ClaimCursor()
        # The database's last answer to "how long until the next job is due", reused
        # for a while when asking costs much (see _idle_timeout).
        self._due = DueAnswer()
        self._log = structlog.get_logger("pgqueue.worker")
        # Set while the worker is idle: its last claim found less than it could take.
        self.idle = asyncio.Event()

    async def run(self) -> None:
        """Claim until stopped."""
        stop = self._stop
        failures = 0
        while not stop.is_set():
            if await self._held():
                continue
            want = self._want(len(self._jobs.running))
            if want <= 0:
                await self._wait_for_slot()
                continue
            # Clear before claiming: a NOTIFY that lands during the claim must not be lost.
            self._wake.clear()
            self._written.clear()
            worker_id = self._worker_id()
            self._reserved += want
            try:
                jobs = await self._claim(want, worker_id)
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
            finally:
                self._reserved -= want
            if stop.is_set():
                await self.release([j.id for j in jobs], worker_id)
                return
            if not self._may_start():  # fenced, declared dead or held meanwhile
                await self.release([j.id for j in jobs], worker_id)
                continue
            self._full = len(jobs) == want
            self._started(jobs)
            if len(jobs) < want:
                await self._sleep(claimed=len(jobs))

    async def _claim(self, want: int, worker_id: str) -> list[ClaimedJob]:
        """One claim round trip (after a hand-back if one is due), from the cursor."""
        cursor = self._cursor
        async with acquire(self._pool) as conn:
            ex = AsyncpgExecutor(conn)
            if self._hand_back.due() and await self._hand_back.run(
                ex, worker_id, self._jobs.known_ids
            ):
                cursor.rescan()  # what went back kept its run_at: behind the cursor
            self.claims += 1
            if self._limited:  # claim_jobs_limited: from the head, no cursor to keep
                started = time.monotonic()
                claim = await driver.claim_flow(ex, self._queues, want, worker_id, limited=True)
                jobs, self._limited, self._locked = claim.jobs, claim.limited, claim.locked
                seconds = time.monotonic() - started
                if not self._limited:
                    cursor.rescan()  # the cursor is as old as the limit: start afresh
            else:
                jobs, seconds = await self._claim_from_cursor(ex, want, worker_id)
        # Reported once the connection is back in the pool: a slow sync hook holds none.
        self._report("claim", want, len(jobs), seconds, worker_id)
        return jobs

    async def _claim_from_cursor(
        self, ex: AsyncpgExecutor, want: int, worker_id: str
    ) -> tuple[list[ClaimedJob], float]:
        """An unlimited claim starting at the cursor; moves the cursor past what it took."""
        cursor = self._cursor
        started = time.monotonic()
        starts, full = cursor.starts(self._queues, started)
        try:
            claim = await driver.claim_flow(
                ex, self._queues, want, worker_id, limited=False, starts=starts
            )
        except BaseException:
            cursor.rescan()
            raise
        jobs, self._limited, self._locked = claim.jobs, claim.limited, claim.locked
        ended = time.monotonic()
        cursor.claimed(
            ((j.queue, ClaimKey(j.priority, j.run_at, j.id)) for j in jobs if j.run_at),
            full=full,
            elapsed=ended - started,
            now=ended,
        )
        return jobs, ended - started

    def _report(
        self, kind: ClaimKind, wanted: int, claimed: int, seconds: float, worker_id: str
    ) -> None:
        """Tell the claim hooks (queue.on_claim) of a claim made."""
        if self._hooks is not None and self._hooks.claim_hooks:
            queues = tuple(self._queues)
            self._hooks.claimed(ClaimRound(queues, wanted, claimed, seconds, kind, worker_id))

    @property
    def full_scans(self) -> int:
        """Claims that scanned their queues from the head (the rest started at the
        cursor)."""
        return self._cursor.full_scans

    @property
    def _slots_in_database(self) -> bool:
        """Whether a limited queue of ours is claimed under its lock, counting running
        jobs there (not rate-only): a slot of ours then frees once its outcome is
        written. A rate-only queue's slots are only ours, freed as their jobs end."""
        return self._limited and self._locked

    async def _wait_for_slot(self) -> None:
        """Every slot of ours is taken: wait until one frees."""
        if self._slots_in_database:
            # A limited queue's slot is free only once its job's outcome is written (a
            # write with a refill has taken it again by then): wait for a write, not for
            # a job to end, which would claim before the database has a slot free.
            self._written.clear()
            await first_of(self._written, self._wake, self._stop, timeout=self._poll_interval)
        else:
            slot_freed = self._jobs.slot_freed
            slot_freed.clear()
            await first_of(slot_freed, self._stop, timeout=None)

    def _started(self, jobs: list[ClaimedJob]) -> None:
        self._stats.claimed += len(jobs)
        for job in jobs:
            self._jobs.start(job)

    async def _held(self) -> bool:
        """Wait, and say so, if no claim may be made now: while the worker is not
        registered (fenced, or rejoining), claims are held after a failover, jobs
        claimed wait to start, or too many outcomes wait to be written."""
        stop = self._stop
        if not self._registered.is_set():
            await first_of(self._registered, stop, timeout=None)
        elif not self._claims_open.is_set():
            await first_of(self._claims_open, stop, timeout=None)
        elif self._runner.waiting:  # jobs claimed but not started: take no more
            await first_of(self._runner.unblocked, stop, timeout=None)
        elif (unwritten := self._unwritten()) >= self.max_unwritten:
            if not self._waiting_for_writes:
                self._waiting_for_writes = True
                # Info: under a heavy load a write stalled for a moment (a VACUUM, a
                # pruning round) brings it now and then; a stuck one shows in the writes.
                self._log.info(
                    "claims_waiting_for_writes", unwritten=unwritten, limit=self.max_unwritten
                )
            self._written.clear()  # then look again: a write may have ended meanwhile
            if self._unwritten() >= self.max_unwritten:
                await first_of(self._written, self._wake, stop, timeout=self._poll_interval)
        else:
            self._waiting_for_writes = False
            return False
        return True

    def _want(self, running: int) -> int:
        """How many jobs to claim now; 0: wait for a slot to free first."""
        free = self._concurrency - running - self._reserved
        if self._slots_in_database and self._full and free < self._min_claim:
            return 0
        return max(0, min(free, self._batch_size))

    # --- refills: a claim that rides on the write of outcomes (Completer) --------------

    def _may_start(self) -> bool:
        """Whether jobs just claimed may start: registered, not fenced and not held by a
        failover (a claim that raced the hold's start goes back)."""
        return self._registered.is_set() and self._claims_open.is_set()

    def refill(self, outcomes: int) -> Refill | None:
        """The claim to make with the ``outcomes`` the Completer is about to write: while
        a queue of ours is limited, as many as we may take (the database gives what its
        limits leave), their slots reserved until :meth:`refilled`. None when every
        limited queue of ours is rate-only: it has no slots to refill, and its claims
        reserve their starts in a transaction of their own first, which a claim riding
        on a write cannot (it would hold the queue's lock through the write's commit,
        which is what the reservation avoids). None for a write of
        fewer outcomes than a quarter batch: each claim of a limited queue pays a fixed
        cost under its lock (a key walk, a commit), so a trickle of small writes is left
        to the claim loop, whose one claim serves every write made while it waits."""
        if not self._slots_in_database or self._stop.is_set() or not self._may_start():
            return None
        if outcomes < self._min_claim:
            return None
        if self._runner.waiting:  # jobs claimed but not started: take no more
            return None
        if self._hand_back.due():
            # The hand-back goes before a claim: leave this one to the claim loop.
            self._wake.set()
            return None
        want = self._want(len(self._jobs.running))
        if want <= 0:
            return None  # the claim loop claims once enough slots of ours are free
        self._reserved += want
        return Refill(list(self._queues), want, self._worker_id())

    def refilled(self, refill: Refill) -> None:
        """The outcomes and the refill committed together: start the jobs claimed."""
        self._reserved -= refill.want
        self._report("refill", refill.want, len(refill.jobs), refill.seconds, refill.worker_id)
        self._limited = refill.limited
        if self._stop.is_set() or not self._may_start() or refill.worker_id != self._worker_id():
            # Stopping, or fenced, declared dead (the jobs may be under the old id) or
            # held by a failover meanwhile: back to the queue, as if never claimed.
            task = asyncio.ensure_future(
                self.release([j.id for j in refill.jobs], refill.worker_id)
            )
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
            return
        self._full = len(refill.jobs) == refill.want
        self._started(refill.jobs)
        if self._full or not refill.limited:
            # More may be waiting (or the queue is no longer limited): claim again now.
            self._wake.set()
        elif not refill.jobs:
            self._recheck.set()

    def refill_failed(self, refill: Refill) -> None:
        """The write and its claim failed together (or their answer was lost): the
        reservation goes, and before the next claim the worker hands back whatever
        the database says it holds without knowing."""
        self._reserved -= refill.want
        self._hand_back.unsure = True

    async def _sleep(self, claimed: int) -> None:
        """Idle: until a wake-up, the next job or rate slot due, or the poll."""
        idle_for: float | None = None
        if claimed and self._limited:
            # A limited queue's claim that took some jobs: the next chance is when their
            # outcomes are written (with a refill, or then a claim of ours), sooner than
            # anything the database could say (asking would cost a round trip a cycle).
            idle_for = self._poll_interval
        self.idle.set()
        try:
            while True:
                if idle_for is None:
                    idle_for, known = await self._idle_timeout()
                    if known is not None:  # None: the database did not answer
                        self._limited = known
                self._recheck.clear()
                if self._limited:
                    # A limited queue's due jobs wait for a slot: one of ours frees one
                    # once its outcome is written (another worker's is seen at an
                    # enqueue or the poll); a refill that found no room asks us to look
                    # again when the next slot is due (a rate's window).
                    await first_of(
                        self._wake, self._stop, self._written, self._recheck, timeout=idle_for
                    )
                else:
                    await first_of(self._wake, self._stop, timeout=idle_for)
                woken = self._wake.is_set() or self._stop.is_set() or self._written.is_set()
                if woken or not self._recheck.is_set():
                    return
                idle_for = None  # only a refill that found no room: sleep again, anew
        finally:
            self.idle.clear()

    async def _idle_timeout(self) -> tuple[float, bool | None]:
        """How long to sleep: until the poll comes round, or until the next delayed job
        or rate-limit slot is due; and whether any of the queues is limited (None when
        the database did not say)."""
        now = time.monotonic()
        reused = self._due.reuse(now)
        if reused is not None:
            return min(max(reused, 0.005), self._poll_interval), None
        self.idle_checks += 1
        try:
            async with acquire(self._pool) as conn:
                wait = await driver.next_claim_wait(AsyncpgExecutor(conn), self._queues)
        except CLAIM_RETRY_ERRORS:
            return self._poll_interval, None  # the next claim will say what is wrong
        self._due.answered(wait.due_in, asked=now, now=time.monotonic())
        if wait.due_in is None:
            return self._poll_interval, wait.limited
        return min(max(wait.due_in, 0.005), self._poll_interval), wait.limited

    async def settle(self) -> None:
        """Wait for the hand-backs of refills that came back while stopping."""
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

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
