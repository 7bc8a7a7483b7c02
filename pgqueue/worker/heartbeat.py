"""The heartbeat: a worker's lease on its running jobs, and the rescue of dead workers'.

A :class:`~pgqueue.worker.services.ThreadService`: it runs in a thread of its own with
its own connection, so that a task that blocks the event loop cannot stop the beats of
a worker that is alive (only a worker that is dead, frozen or cut off from the database
stops beating). Each beat is one statement per worker, whatever the number of jobs it
holds. After each beat it tries the rescue; the one worker whose statement gets the
rescue lock (:data:`pgqueue.locks.RESCUE`) hands back the jobs of workers whose
heartbeat is older than their own lease, as each recorded it when it registered:
workers with different leases never judge one another by their own.

A worker that cannot reach the database never hears that it was declared dead, so it
fences itself first (:class:`SelfFence`, on the worker's loop): once its last successful
beat was *sent* a lease minus :func:`fence_margin` ago, by its own monotonic clock, it
gives up its running jobs and stops claiming. The database recorded that beat no
sooner than it was sent, and the rescue counts a whole lease from that record, so the
jobs are given up before anyone can have taken them.

Each beat also notes the server's timeline (pgqueue.timeline): after a failover, a beat
counts for the fence only once the worker has checked its running jobs against the new
primary, so a worker that cannot check gives them up before the claims' hold ends.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from pgqueue.connect import psycopg_connect_args
from pgqueue.locks import RESCUE
from pgqueue.sql import query
from pgqueue.timeline import Timeline
from pgqueue.worker.services import ThreadService

if TYPE_CHECKING:
    from collections.abc import Callable


class FailoverWatcher(Protocol):
    """Who follows the server's timeline for the worker (pgqueue.worker.failover)."""

    def noted_from_thread(self, noted: Timeline) -> None: ...

    def checked_on(self, timeline: int) -> bool: ...


def fence_margin(lease: float) -> float:
    """How long before a rescue could come a silent worker fences itself: a fifth of
    the lease (one heartbeat interval). Time for the loop to notice, cancel its tasks
    and have its task processes killed (pebble's pool acts within a tenth of a second),
    while a live worker fences only after four beat intervals without a success."""
    return lease / 5


def fence_in(last_beat_sent: float, now: float, *, lease: float, margin: float) -> float:
    """Seconds until a worker whose last successful beat was sent at ``last_beat_sent``
    must fence itself (zero or less: now); both times on its own monotonic clock."""
    return last_beat_sent + lease - margin - now


def must_fence(last_beat_sent: float, now: float, *, lease: float, margin: float) -> bool:
    return fence_in(last_beat_sent, now, lease=lease, margin=margin) <= 0


class Heartbeat(ThreadService):
    name = "heartbeat"
    election = RESCUE

    def __init__(
        self,
        dsn: str,
        *,
        worker_id: Callable[[], str],
        interval: float,
        lease: float,
        on_declared_dead: Callable[[str], None],
        failover: FailoverWatcher | None = None,
    ) -> None:
        super().__init__(interval)
        self._failover = failover
        # When the latest beat withheld (taken on a timeline the running jobs were not
        # yet checked against) was sent: renewed once they are.
        self._withheld = -math.inf
        self._dsn = dsn
        self._worker_id = worker_id
        self._lease = lease
        self._on_declared_dead = on_declared_dead
        self._conn: psycopg.Connection[Any] | None = None
        self.beats = 0
        self.rescued = 0
        # When the latest beat (or registration) the database took was sent, by
        # time.monotonic(): what SelfFence measures the silence from. The worker gives
        # its registration's before the first beat.
        self._renewed_lock = threading.Lock()
        self.last_renewed = -math.inf

    def renewed(self, sent_at: float) -> None:
        """The database took a beat or a registration of ours sent at ``sent_at``."""
        with self._renewed_lock:
            self.last_renewed = max(self.last_renewed, sent_at)

    def renew_withheld(self) -> None:
        """The running jobs were checked against the new timeline: the beats withheld
        meanwhile count."""
        with self._renewed_lock:
            self.last_renewed = max(self.last_renewed, self._withheld)

    def run_round(self) -> None:
        """One heartbeat, then one rescue attempt."""
        conn = self._connection()
        worker_id = self._worker_id()
        sent_at = time.monotonic()  # before sending: never later than the database's now()
        with psycopg.RawCursor(conn) as cur:
            row = cur.execute(query("heartbeat"), (worker_id,)).fetchone()
        assert row is not None  # noqa: S101 - one row, whatever the worker's fate
        beat_id, timeline, claims_held_for = row
        self.beats += 1
        alive = beat_id is not None
        checked = True
        if self._failover is not None:
            self._failover.noted_from_thread(Timeline(timeline, claims_held_for))
            checked = self._failover.checked_on(timeline)
        if alive and checked:
            self.renewed(sent_at)
        elif alive:
            # After a failover: a lost claim may still run here. No renewal until the
            # worker has checked its jobs; one that cannot check fences itself.
            with self._renewed_lock:
                self._withheld = max(self._withheld, sent_at)
        else:
            self.log.error("worker_declared_dead", worker_id=worker_id)
            self._on_declared_dead(worker_id)
        self.rescue()

    def rescue(self) -> int:
        """Rescue the jobs of dead workers if no other worker is doing it; how many."""
        conn = self._connection()  # autocommit: the rescue's lock lasts one statement
        with psycopg.RawCursor(conn) as cur:
            # Our lease judges only the workers that recorded none (older releases).
            rows = cur.execute(query("rescue_jobs"), (self._lease, RESCUE.key)).fetchall()
        if rows:
            self.rescued += len(rows)
            self.log.warning(
                "jobs_rescued",
                job_ids=[r[0] for r in rows],
                failed=sum(1 for r in rows if r[1] == "failed"),
            )
        return len(rows)

    def after_failure(self, exc: Exception) -> None:
        # A statement the server refused (a statement timeout in the rescue) leaves the
        # connection usable; a lost one is replaced at the next beat.
        conn = self._conn
        if not isinstance(exc, psycopg.Error) or conn is None or conn.closed or conn.broken:
            self.close()

    def counters(self) -> dict[str, int]:
        return {"beats": self.beats, "rescued": self.rescued}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._dsn, autocommit=True, **psycopg_connect_args(self._dsn)
            )
        return self._conn


class SelfFence:
    """On the worker's loop: calls ``on_fence(seconds_silent)`` once no beat the
    database took was sent for a lease minus the margin, and ``on_renewed()`` once one
    sent since then is taken (the database answers again, and the lease is fresh)."""

    def __init__(
        self,
        heartbeat: Heartbeat,
        *,
        lease: float,
        on_fence: Callable[[float], None],
        on_renewed: Callable[[], None],
    ) -> None:
        self._heartbeat = heartbeat
        self.lease = lease
        self.margin = fence_margin(lease)
        self._on_fence = on_fence
        self._on_renewed = on_renewed
        self.fenced = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._check()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _check(self) -> None:
        last, now = self._heartbeat.last_renewed, time.monotonic()
        left = fence_in(last, now, lease=self.lease, margin=self.margin)
        if left <= 0 and not self.fenced:
            self.fenced = True
            self._on_fence(now - last)
        elif left > 0 and self.fenced:
            self.fenced = False
            self._on_renewed()
        # Fenced: look for a fresh beat a few times a margin. Else: wake at the
        # deadline, which a beat since pushed on (checked then, not at every beat).
        wait = self.margin / 4 if self.fenced else left
        self._timer = asyncio.get_running_loop().call_later(wait, self._check)
