"""The heartbeat: a worker's lease on its running jobs, and the rescue of dead workers'.

A :class:`~pgqueue.worker.services.ThreadService`: it runs in a thread of its own with
its own connection, so that a task that blocks the event loop cannot stop the beats of
a worker that is alive (only a worker that is dead, frozen or cut off from the database
stops beating). Each beat is one statement per worker, whatever the number of jobs it
holds. After each beat it tries the rescue; the one worker whose statement gets the
rescue lock (:data:`pgqueue.locks.RESCUE`) hands back the jobs of workers whose
heartbeat is older than their own lease, as each recorded it when it registered:
workers with different leases never judge one another by their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.connect import psycopg_connect_args
from pgqueue.locks import RESCUE
from pgqueue.sql import query
from pgqueue.worker.services import ThreadService

if TYPE_CHECKING:
    from collections.abc import Callable


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
    ) -> None:
        super().__init__(interval)
        self._dsn = dsn
        self._worker_id = worker_id
        self._lease = lease
        self._on_declared_dead = on_declared_dead
        self._conn: psycopg.Connection[Any] | None = None
        self.beats = 0
        self.rescued = 0

    def run_round(self) -> None:
        """One heartbeat, then one rescue attempt."""
        conn = self._connection()
        worker_id = self._worker_id()
        with psycopg.RawCursor(conn) as cur:
            alive = cur.execute(query("heartbeat"), (worker_id,)).fetchone() is not None
        self.beats += 1
        if not alive:
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
