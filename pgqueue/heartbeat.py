"""The heartbeat: a worker's lease on its running jobs, and the rescue of dead workers'.

It runs in a thread of its own with its own connection, so that a task that blocks the
event loop cannot stop the beats of a worker that is alive (only a worker that is dead,
frozen or cut off from the database stops beating). Each beat is one statement per
worker, whatever the number of jobs it holds. After each beat the thread tries the
rescue; the one worker whose statement gets the rescue lock hands back the jobs of
workers whose heartbeat is older than their own lease, as each recorded it when it
registered: workers with different leases never judge one another by their own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgqueue.connect import psycopg_connect_args
from pgqueue.sql import query

if TYPE_CHECKING:
    from collections.abc import Callable


class Heartbeat(threading.Thread):
    def __init__(
        self,
        dsn: str,
        *,
        worker_id: Callable[[], str],
        interval: float,
        lease: float,
        on_declared_dead: Callable[[str], None],
    ) -> None:
        super().__init__(name="pgqueue-heartbeat", daemon=True)
        self._dsn = dsn
        self._worker_id = worker_id
        self._interval = interval
        self._lease = lease
        self._on_declared_dead = on_declared_dead
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._log = structlog.get_logger("pgqueue.worker")
        self.beats = 0
        self.rescued = 0

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        failures = 0
        while not self._stopping.wait(self._interval):
            try:
                self.beat()
            except Exception as exc:
                # Whatever went wrong, the thread goes on: a worker whose heartbeat
                # thread died would keep claiming while its jobs were rescued from it.
                # While the database is away (a restart) it tries again every beat,
                # so that it is back well within the lease once the database is.
                failures += 1
                self._log.warning(
                    "heartbeat_failed",
                    error=repr(exc),
                    sqlstate=getattr(exc, "sqlstate", None),
                    failures=failures,
                )
                if not isinstance(exc, psycopg.Error) or self._broken():
                    self._close()
            else:
                if failures:
                    self._log.info("heartbeat_restored", failures=failures)
                failures = 0
        self._close()

    def _broken(self) -> bool:
        # A statement the server refused (a statement timeout in the rescue) leaves the
        # connection usable; a lost one is replaced at the next beat.
        return self._conn is None or self._conn.closed or self._conn.broken

    def beat(self) -> None:
        """One heartbeat, then one rescue attempt."""
        conn = self._connection()
        worker_id = self._worker_id()
        with psycopg.RawCursor(conn) as cur:
            alive = cur.execute(query("heartbeat"), (worker_id,)).fetchone() is not None
        self.beats += 1
        if not alive:
            self._log.error("worker_declared_dead", worker_id=worker_id)
            self._on_declared_dead(worker_id)
        self.rescue()

    def rescue(self) -> int:
        """Rescue the jobs of dead workers if no other worker is doing it; how many."""
        conn = self._connection()  # autocommit: the rescue's lock lasts one statement
        with psycopg.RawCursor(conn) as cur:
            # Our lease judges only the workers that recorded none (older releases).
            rows = cur.execute(query("rescue_jobs"), (self._lease,)).fetchall()
        if rows:
            self.rescued += len(rows)
            self._log.warning(
                "jobs_rescued",
                job_ids=[r[0] for r in rows],
                failed=sum(1 for r in rows if r[1] == "failed"),
            )
        return len(rows)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._dsn, autocommit=True, **psycopg_connect_args(self._dsn)
            )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
