"""Batched completion: finished jobs are written back one statement per batch.

Jobs report their outcome here and move on; a single flusher writes every outcome that
has piled up since its last write in one UPDATE for successes and one for failures.
Under light load a batch is one job and goes out at once; under heavy load batches
grow by themselves, so the cost per job falls as the rate rises.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import driver
from pgqueue.dberrors import connection_failed, reconnect_delay, rolled_back
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg


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
        # Set after each batch is written: a slot of a limited queue (pgqueue.flow) is
        # free for the claim only once its job's outcome is in the database.
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
        try:
            async with acquire(self._pool) as conn:
                ex = AsyncpgExecutor(conn)
                if ok[0]:
                    await driver.complete_succeeded(ex, *ok)
                    ok = ([], [], [])
                if bad[0]:
                    await driver.complete_failed(ex, *bad)
                    bad = ([], [], [], [])
                if later:
                    ids, attempts, after = zip(*later, strict=True)
                    await driver.snooze(ex, ids, after, attempts)
        except BaseException:
            self._snoozed[:0] = later
            # Put back whatever was not written, ahead of newer outcomes.
            self._succeeded_ids[:0], self._results[:0], self._succeeded_attempts[:0] = ok
            (
                self._failed_ids[:0],
                self._errors[:0],
                self._retry_in[:0],
                self._failed_attempts[:0],
            ) = bad
            raise
        finally:
            self._writing = []
        self.batches += 1
        self.written.set()
        if requeued and self._on_requeued is not None:
            self._on_requeued()
