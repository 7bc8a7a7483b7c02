"""Where a worker's claim starts in each queue: the claim cursor (no I/O).

A claim walks the partial index ``jobs_claim_idx`` (queue, priority DESC, run_at, id,
``WHERE state = 'queued'``) in claim order. Every job claimed leaves an entry there that
only VACUUM removes, and none can be removed while a long transaction pins the xmin
horizon (a slow report, a forgotten psql session). A claim that starts at the head of
the queue checks each of those entries against the heap: its cost grows with the jobs
processed since the last vacuum, or since the horizon was pinned (quadratic over a long
hold). So each worker remembers, per queue, the key of the last job of its last claim
in claim order and starts there: the ``claim_jobs`` statement scans the higher
priorities from their head, the cursor's priority past the cursor, and the lower
priorities from their head.

Jobs that land behind a cursor are found by a *full scan* (the same statement from
:data:`HEAD`): a job whose enqueuing transaction committed after the cursor passed its
``run_at`` (which defaults to the transaction's start), one enqueued with a past
``run_at``, one handed back or unblocked (a sequence, a workflow) with its old
``run_at``, one skipped under a lock by a claim that rolled back. A worker's first claim,
its first after an error or a hand-back, and any claim once :attr:`ClaimCursor.period`
has passed since the last full scan is a full one. The period follows what a full scan
costs beyond a claim from the cursor: :data:`FULL_SCAN_COST_RATIO` times that (so the
extra walks take at most about 5% of the claim's time), at most
:data:`FULL_SCAN_MAX_PERIOD`. On a healthy database a full scan costs what a cursor claim
does: the period is about nothing, nearly every claim is a full one, and the order is
exactly the head scan's. While the horizon is held (or vacuum falls behind) the period
grows, and a job behind the cursor waits at most that long.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


@dataclass(frozen=True, slots=True)
class ClaimKey:
    """A job's place in claim order: higher priority first, then older run_at, then id."""

    priority: int
    run_at: datetime
    id: int

    def order(self) -> tuple[int, datetime, int]:
        """Sort key in claim order (ascending)."""
        return (-self.priority, self.run_at, self.id)


# Before every job: the greatest priority a smallint holds, a run_at before any the
# jobs table accepts (its check starts at 0001-01-02), the least bigint.
HEAD: Final = ClaimKey(32767, datetime(1, 1, 1, tzinfo=UTC), -(2**63))

# A full scan at most every this many times what it costs beyond a cursor claim...
FULL_SCAN_COST_RATIO: Final = 20.0
# ...and at least every this many seconds.
FULL_SCAN_MAX_PERIOD: Final = 10.0
# Weight of the newest cursor claim in the running mean of their cost.
_CURSOR_COST_WEIGHT: Final = 0.2


def claim_starts(queues: Sequence[str], keys: dict[str, ClaimKey] | None) -> list[ClaimKey]:
    """The start of each queue's scan, aligned with ``queues`` (:data:`HEAD` for a full
    scan, or for a queue with no cursor yet)."""
    if keys is None:
        return [HEAD] * len(queues)
    return [keys.get(queue, HEAD) for queue in queues]


def start_params(keys: Sequence[ClaimKey]) -> tuple[list[int], list[datetime], list[int]]:
    """``claim_jobs``' parameters $4-$6 (priorities, run_ats, ids) for these starts."""
    return [k.priority for k in keys], [k.run_at for k in keys], [k.id for k in keys]


def last_keys(claimed: Iterable[tuple[str, ClaimKey]]) -> dict[str, ClaimKey]:
    """Per queue, the greatest key in claim order among the jobs of one claim."""
    last: dict[str, ClaimKey] = {}
    for queue, key in claimed:
        seen = last.get(queue)
        if seen is None or key.order() > seen.order():
            last[queue] = key
    return last


class ClaimCursor:
    """One worker's cursors, one per queue, and when its next full scan is due (times
    are a monotonic clock's, in seconds)."""

    def __init__(self) -> None:
        self._keys: dict[str, ClaimKey] = {}
        self._next_full = 0.0
        self.period = 0.0  # seconds between full scans, from the last one's cost
        self.full_scans = 0
        # What a claim from the cursor takes (a running mean; None before the first):
        # what the worker's own event loop and the batch's UPDATE add to any claim, so
        # that only the full scan's own extra walk sets the period.
        self.cursor_cost: float | None = None

    def starts(self, queues: Sequence[str], now: float) -> tuple[list[ClaimKey], bool]:
        """Where the next claim starts in each queue, and whether it is a full scan."""
        full = now >= self._next_full
        return claim_starts(queues, None if full else self._keys), full

    def claimed(
        self, claimed: Iterable[tuple[str, ClaimKey]], *, full: bool, elapsed: float, now: float
    ) -> None:
        """After a claim that answered: move each queue's cursor to the last job claimed
        from it (forward, or back when the claim found jobs behind it); after a full
        scan, set the next one's time from its cost."""
        self._keys.update(last_keys(claimed))
        elapsed = max(elapsed, 0.0)
        if not full:
            mean = self.cursor_cost
            self.cursor_cost = (
                elapsed if mean is None else mean + _CURSOR_COST_WEIGHT * (elapsed - mean)
            )
            return
        self.full_scans += 1
        extra = elapsed - (self.cursor_cost or 0.0)
        self.period = min(FULL_SCAN_MAX_PERIOD, FULL_SCAN_COST_RATIO * max(extra, 0.0))
        self._next_full = now + self.period

    def rescan(self) -> None:
        """Make the next claim a full scan (after an error, or a hand-back that put
        jobs back with their old run_at)."""
        self._next_full = 0.0


# The idle worker's question "how long until the next job is due" (the statement
# seconds_until_next_job) reads every queued entry of its queues, dead ones included: as
# costly as a full scan while the horizon is held. A worker that goes idle after every
# claim (a steady trickle) reuses an answer for this many times what it cost...
DUE_REUSE_COST_RATIO: Final = 20.0
# ...and at most this many seconds: the most a delayed job can be picked up late.
DUE_REUSE_MAX: Final = 1.0


class DueAnswer:
    """The database's last answer on when the next job is due, and how long it may be
    reused (a monotonic clock's seconds)."""

    def __init__(self) -> None:
        self._due_at: float | None = None
        self._valid_until = 0.0

    def answered(self, due_in: float | None, *, asked: float, now: float) -> None:
        """The database answered ``due_in`` (None: nothing due) to a question asked at
        ``asked``."""
        reuse_for = min(DUE_REUSE_MAX, DUE_REUSE_COST_RATIO * max(now - asked, 0.0))
        self._valid_until = now + reuse_for
        self._due_at = None if due_in is None else now + due_in

    def reuse(self, now: float) -> float | None:
        """How long to sleep on the last answer; None when it must be asked again. The
        sleep ends when the answer expires, so that the next one is asked then."""
        if now >= self._valid_until:
            return None
        until = self._valid_until - now
        if self._due_at is not None:
            until = min(until, self._due_at - now)
        return until
