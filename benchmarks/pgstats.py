"""What the scale benchmarks read off the server: the claim's cost (a probe), the jobs
table's sizes and dead tuples, and the CPU time of the server's processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
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


async def table_stats(conn: asyncpg.Connection[Any]) -> TableStats:
    row = await conn.fetchrow(TABLE_STATS)
    assert row is not None  # noqa: S101 - pgqueue.jobs exists
    heap, index, live, dead, autovacuums = row
    return TableStats(heap / 2**20, index / 2**20, live, dead, autovacuums)


class ClaimProbe:
    """The workers' claim (``claim_jobs``, their default batch), run under EXPLAIN
    ANALYZE in a transaction rolled back: what one claim costs the server as the table
    evolves, without taking a job from the workers."""

    def __init__(self, conn: asyncpg.Connection[Any], queue: str, *, every: float = 0.25):
        from pgqueue.sql import query  # noqa: PLC0415
        from pgqueue.worker.core import DEFAULT_BATCH_SIZE  # noqa: PLC0415

        self._conn = conn
        self._sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + query("claim_jobs")
        self._params = ([queue], DEFAULT_BATCH_SIZE, str(uuid.uuid4()))
        self._every = every
        self.samples: list[float] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            tx = self._conn.transaction()
            await tx.start()
            try:
                plan = await self._conn.fetchval(self._sql, *self._params)
            finally:
                await tx.rollback()
            self.samples.append(float(json.loads(plan)[0]["Execution Time"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)

    async def close(self) -> None:
        await self._conn.close()

    def take(self) -> list[float]:
        """The samples (ms) since the last take."""
        samples, self.samples = self.samples, []
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
