"""What the scale benchmarks read off the server: the claim's cost (a probe), the jobs
table's sizes and dead tuples, and the CPU time of the server's processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncpg

TABLE_STATS = """
SELECT pg_relation_size('pgqueue.jobs'), pg_indexes_size('pgqueue.jobs'),
       s.n_live_tup, s.n_dead_tup, s.autovacuum_count
FROM pg_stat_user_tables s WHERE s.relid = 'pgqueue.jobs'::regclass
"""


@dataclass(frozen=True, slots=True)
class TableStats:
    heap_mb: float
    index_mb: float
    live: int
    dead: int
    autovacuums: int


INDEX_SIZES = """
SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)
FROM pg_index i WHERE i.indrelid = 'pgqueue.jobs'::regclass ORDER BY 1
"""


async def index_sizes(conn: asyncpg.Connection[Any]) -> dict[str, float]:
    """Each index of pgqueue.jobs and its size (MB)."""
    return {name: size / 2**20 for name, size in await conn.fetch(INDEX_SIZES)}


async def table_stats(conn: asyncpg.Connection[Any]) -> TableStats:
    row = await conn.fetchrow(TABLE_STATS)
    assert row is not None  # noqa: S101 - pgqueue.jobs exists
    heap, index, live, dead, autovacuums = row
    return TableStats(heap / 2**20, index / 2**20, live, dead, autovacuums)


class ClaimProbe:
    """The workers' claim (``claim_jobs``, their default batch) run in a transaction rolled
    back, without taking a job from the workers, two ways each round: from the head of
    the queue under EXPLAIN ANALYZE (``full``: the server's time for a full-scan claim,
    which a worker makes once per full-scan period, see pgqueue/claim_cursor.py), then
    from the probe's own cursor, the last job of its previous cursor claim
    (``samples``: the round trip of a claim like the workers' others, from a cursor a
    round old, so an upper bound). It waits at least ten times its last full claim
    between rounds, so that a slow one does not take a CPU from the workers."""

    def __init__(self, conn: asyncpg.Connection[Any], queue: str, *, every: float = 0.25):
        from pgqueue.claim_cursor import HEAD  # noqa: PLC0415
        from pgqueue.sql import query  # noqa: PLC0415
        from pgqueue.worker.core import DEFAULT_BATCH_SIZE  # noqa: PLC0415

        self._conn = conn
        self._claim = query("claim_jobs")
        self._head = HEAD
        self._args = ([queue], DEFAULT_BATCH_SIZE, str(uuid.uuid4()))
        self._every = every
        self._cursor: Any = None  # a ClaimKey, once a cursor claim found jobs
        self.samples: list[float] = []  # ms, cursor claims (round trips)
        self.full: list[float] = []  # ms, full-scan claims (server time)

    async def run(self, stop: asyncio.Event) -> None:
        from pgqueue.claim_cursor import ClaimKey, start_params  # noqa: PLC0415

        conn = self._conn
        while not stop.is_set():
            tx = conn.transaction()
            await tx.start()
            try:
                plan = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + self._claim,
                    *self._args,
                    *start_params([self._head]),
                )
            finally:
                await tx.rollback()
            took = float(json.loads(plan)[0]["Execution Time"])
            self.full.append(took)
            tx = conn.transaction()
            await tx.start()
            try:
                began = time.perf_counter()
                rows = await conn.fetch(
                    self._claim, *self._args, *start_params([self._cursor or self._head])
                )
                self.samples.append((time.perf_counter() - began) * 1000)
            finally:
                await tx.rollback()
            keys = [ClaimKey(r["priority"], r["run_at"], r["id"]) for r in rows if r["id"]]
            if keys:
                self._cursor = max(keys, key=ClaimKey.order)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(self._every, 10 * took / 1000))

    async def close(self) -> None:
        await self._conn.close()

    def take(self) -> list[float]:
        """The cursor claims' samples (ms) since the last take."""
        samples, self.samples = self.samples, []
        return samples

    def take_full(self) -> list[float]:
        """The full-scan claims' samples (ms) since the last take."""
        samples, self.full = self.full, []
        return samples


def quantiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples`` (NaN when there are none)."""
    if not samples:
        return float("nan"), float("nan")
    if len(samples) == 1:
        return samples[0], samples[0]
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid in ``data_dir``'s postmaster.pid (None: not a server of this machine)."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


class ServerCpu:
    """CPU seconds used by a local server's processes (the postmaster and its children,
    read from /proc): the server's share of the machine over an interval. None where the
    server is not on this machine or /proc cannot tell."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self._pid = postmaster_pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._seen: dict[int, int] = {}  # ticks by pid

    @classmethod
    async def of(cls, conn: asyncpg.Connection[Any]) -> ServerCpu:
        data_dir = None
        with contextlib.suppress(Exception):  # not a superuser: no figure
            data_dir = await conn.fetchval("SHOW data_directory")
        return cls(None if data_dir is None else _postmaster_pid(Path(data_dir)))

    def seconds(self) -> float | None:
        if self._pid is None:
            return None
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid, ppid = int(stat.parent.name), int(fields[1])
                if self._pid in (pid, ppid):
                    self._seen[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        # A process that has exited keeps what it used when last seen.
        return sum(self._seen.values()) / self._ticks


async def hold_horizon(dsn: str, release: asyncio.Event) -> None:
    """One REPEATABLE READ transaction that has read pgqueue.jobs, open until ``release``."""
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read"):
            await conn.fetchval("SELECT count(*) FROM pgqueue.jobs")
            await release.wait()
    finally:
        await conn.close()
