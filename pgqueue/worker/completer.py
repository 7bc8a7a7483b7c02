"""Batched completion: finished jobs are written back one statement per batch.

Jobs report their outcome here and move on; a single flusher writes every outcome that
has piled up since its last write in one UPDATE for successes and one for failures.
Under light load a batch is one job and goes out at once; under heavy load batches
grow by themselves, so the cost per job falls as the rate rises.

A worker serving a limited queue (pgqueue/flow.py) has the claim of the slots a batch
frees ride on the batch's write (:class:`Refill`): one statement, one round trip and
one commit, in which the slots are freed and taken again, rather than a write, a
wake-up and a claim one after the other while the slots stand empty.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from pgqueue import driver
from pgqueue.dberrors import connection_failed, reconnect_delay, rolled_back
from pgqueue.executors import AsyncpgExecutor
from pgqueue.locks import FLOW
from pgqueue.pools import acquire
from pgqueue.rows import claimed_from_row
from pgqueue.sql import query

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncpg

    from pgqueue.jobs import ClaimedJob


@dataclass(slots=True)
class Refill:
    """A claim made with a batch's write (``complete_and_claim_limited`` in flow.sql):
    up to ``want`` jobs of ``queues`` for ``worker_id``; once written, the ``jobs``
    claimed and whether any of the queues is still ``limited``."""

    queues: list[str]
    want: int
    worker_id: str
    jobs: list[ClaimedJob] = field(default_factory=list)
    limited: bool = True
    seconds: float = 0.0  # the write's round trip, once made


class Refiller(Protocol):
    """The claim loop's side of a refill (:class:`pgqueue.worker.claiming.Claimer`)."""

    def refill(self, outcomes: int) -> Refill | None:
        """A claim to make with a write of ``outcomes`` (its slots reserved), or None."""

    def refilled(self, refill: Refill) -> None:
        """The write and its claim committed: start the jobs."""

    def refill_failed(self, refill: Refill) -> None:
        """Neither is known to have committed: the reservation goes."""


async def complete_and_claim(
    ex: AsyncpgExecutor,
    ids: Sequence[int],
    results: Sequence[str | None],
    attempts: Sequence[int],
    refill: Refill,
) -> None:
    """Write successes (as ``driver.complete_succeeded``) and make ``refill``'s claim
    (as ``driver.claim_flow`` for a limited queue) in one statement."""
    params = (list(ids), list(results), list(attempts), refill.queues, refill.want)
    started = time.monotonic()
    rows = await ex.fetch(
        query("complete_and_claim_limited"), (*params, refill.worker_id, FLOW.key)
    )
    refill.seconds = time.monotonic() - started
    refill.jobs = [claimed_from_row(r) for r in rows if r["id"] is not None]
    refill.limited = len(refill.jobs) < len(rows)  # the marker row


class Completer:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        on_requeued: Callable[[], None] | None = None,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._succeeded_ids: list[int] = []
        self._results: list[str | None] = []
        self._succeeded_attempts: list[int] = []
        self._failed_ids: list[int] = []
        self._errors: list[str] = []
        self._retry_in: list[float | None] = []
        self._failed_attempts: list[int] = []
        self._snoozed: list[tuple[int, int, float]] = []
        self._writing: list[int] = []
        self._pending = asyncio.Event()
        self._closing = False
        self._on_requeued = on_requeued
        self._on_dropped = on_dropped
        self._log = structlog.get_logger("pgqueue.worker")
        self.batches = 0
        # Claims made with a write (refills), and the claim loop that asks for them.
        self.refills = 0
        self.refiller: Refiller | None = None
        # A write with a refill was refused for a reason other than a lost connection:
        # the next goes out without one, so that a fault of the claim's never costs
        # the outcomes.
        self._plain_next = False
        # Set after each batch written without a refill: a slot of a limited queue
        # (pgqueue.flow) is free for the claim only once its job's outcome is in the
        # database, and the claim loop then has to claim it itself.
        self.written = asyncio.Event()

    def succeeded(self, job_id: int, attempt: int, result_json: str | None) -> None:
        self._succeeded_ids.append(job_id)
        self._succeeded_attempts.append(attempt)
        self._results.append(result_json)
        self._pending.set()

    def failed(self, job_id: int, attempt: int, error_json: str, retry_in: float | None) -> None:
        self._failed_ids.append(job_id)
        self._failed_attempts.append(attempt)
        self._errors.append(error_json)
        self._retry_in.append(retry_in)
        self._pending.set()

    def snoozed(self, job_id: int, attempt: int, after: float) -> None:
        self._snoozed.append((job_id, attempt, after))
        self._pending.set()

    def pending_ids(self) -> list[int]:
        """Jobs whose outcome is known here but not yet written, or being written."""
        waiting = [*self._succeeded_ids, *self._failed_ids, *(s[0] for s in self._snoozed)]
        return waiting + self._writing

    def outstanding(self) -> int:
        return len(self._succeeded_ids) + len(self._failed_ids) + len(self._snoozed)

    def unwritten(self) -> int:
        """Outcomes not yet written, those being written included."""
        return self.outstanding() + len(self._writing)

    async def run(self) -> None:
        """Flush until closed; then flush what is left."""
        failures = 0
        while True:
            if not self.outstanding():
                if self._closing:
                    return
                await self._pending.wait()
            self._pending.clear()
            try:
                await self._flush()
                failures = 0
            except Exception as exc:
                if self._plain_next:
                    # Refused with a refill: once more without one before giving up.
                    self._log.warning("completion_refill_failed", error=repr(exc))
                    continue
                if not (connection_failed(exc) or rolled_back(exc)):
                    # Not a lost connection, nor a statement the server rolled back for
                    # a passing reason: writing the same batch again would fail the same
                    # way. Say which jobs are affected; the worker hands them back.
                    self._log.exception("completion_write_rejected", error=repr(exc))
                    self._drop_outstanding()
                    continue
                # The connection went away (a restart), or the server rolled the write
                # back (a deadlock, a statement or lock timeout, a serialization
                # failure): the same outcomes go out again. Safe even if a lost write
                # did commit: the attempt guard makes the second one a no-op.
                failures += 1
                delay = reconnect_delay(failures)
                self._log.warning(
                    "completion_write_failed",
                    error=repr(exc),
                    sqlstate=getattr(exc, "sqlstate", None),
                    outstanding=self.outstanding(),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self._closing = True
        self._pending.set()

    def _drop_outstanding(self) -> None:
        self._log.error(
            "completion_outcomes_dropped",
            job_ids=[*self._succeeded_ids, *self._failed_ids, *(s[0] for s in self._snoozed)],
        )
        self._take_succeeded()
        self._take_failed()
        self._snoozed = []
        if self._on_dropped is not None:
            # Their jobs are still running in the database under this worker, which no
            # longer knows them: the worker hands them back to the queue.
            self._on_dropped()

    def _take_succeeded(self) -> tuple[list[int], list[str | None], list[int]]:
        taken = self._succeeded_ids, self._results, self._succeeded_attempts
        self._succeeded_ids, self._results, self._succeeded_attempts = [], [], []
        return taken

    def _take_failed(self) -> tuple[list[int], list[str], list[float | None], list[int]]:
        taken = self._failed_ids, self._errors, self._retry_in, self._failed_attempts
        self._failed_ids, self._errors, self._retry_in, self._failed_attempts = [], [], [], []
        return taken

    async def _flush(self) -> None:
        ok = self._take_succeeded()
        bad = self._take_failed()
        later, self._snoozed = self._snoozed, []
        # Jobs that go back to the queue for later: the worker's idle alarm must see them.
        requeued = bool(later) or any(r is not None for r in bad[2])
        self._writing = [*ok[0], *bad[0], *(s[0] for s in later)]
        refill = None
        if self.refiller is not None and not self._plain_next and not self._closing:
            refill = self.refiller.refill(len(self._writing))
        self._plain_next = False
        try:
            async with acquire(self._pool) as conn:
                ex = AsyncpgExecutor(conn)
                # Failures and snoozes first: a refill goes with the last statement.
                if bad[0]:
                    await driver.complete_failed(ex, *bad)
                    bad = ([], [], [], [])
                if later:
                    ids, attempts, after = zip(*later, strict=True)
                    await driver.snooze(ex, ids, after, attempts)
                    later = []
                if refill is not None:
                    await complete_and_claim(ex, *ok, refill)
                    ok = ([], [], [])
                elif ok[0]:
                    await driver.complete_succeeded(ex, *ok)
                    ok = ([], [], [])
        except BaseException as exc:
            self._put_back(ok, bad, later)
            if refill is not None:
                self._refill_failed(refill, exc)
            raise
        finally:
            self._writing = []
        self.batches += 1
        if refill is not None:
            self.refills += 1
            assert self.refiller is not None  # noqa: S101 - it made the refill
            self.refiller.refilled(refill)
        else:
            self.written.set()
        if requeued and self._on_requeued is not None:
            self._on_requeued()

    def _put_back(
        self,
        ok: tuple[list[int], list[str | None], list[int]],
        bad: tuple[list[int], list[str], list[float | None], list[int]],
        later: list[tuple[int, int, float]],
    ) -> None:
        """Whatever was not written goes back, ahead of newer outcomes."""
        self._snoozed[:0] = later
        self._succeeded_ids[:0], self._results[:0], self._succeeded_attempts[:0] = ok
        (
            self._failed_ids[:0],
            self._errors[:0],
            self._retry_in[:0],
            self._failed_attempts[:0],
        ) = bad

    def _refill_failed(self, refill: Refill, exc: BaseException) -> None:
        assert self.refiller is not None  # noqa: S101 - it made the refill
        self.refiller.refill_failed(refill)
        # Not a lost connection: perhaps the claim's fault, which must not cost the
        # outcomes. The next write goes without a refill.
        self._plain_next = isinstance(exc, Exception) and not connection_failed(exc)
