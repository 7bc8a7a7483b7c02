"""Flat cost as the work grows: ``make soak-scale`` (not part of ``make test``).

    .venv/bin/python -m benchmarks.soak_scale                 # 10,000,000 jobs
    .venv/bin/python -m benchmarks.soak_scale --jobs 2000000 --dsn postgresql://...

No-op jobs enqueued in bulk (COPY, 100,000 a transaction) while 2 worker processes
(their defaults, with a short retention so that pruning runs) drain them; the backlog is
kept under a bound, as a steady producer would. For each million processed (``--step``) it
prints the processing rate; the p50/p99 of the workers' own claims (each claim's round
trip as the worker timed it, about 10,000 a million: benchmarks/claim_times.py); a
probe's p99 and full-scan p50 (the workers' claim run from a cursor and from the head of
the queue, in transactions it rolls back, a few times a second: benchmarks/pgstats.py);
the heap and index sizes of ``pgqueue.jobs``, the span of ids it holds (what retention
and the backlog keep) and the index bytes per id of it, its dead tuples, the autovacuum
runs on it so far and the part of the step a vacuum of it was running. At the end: the
last step against the first (goal: rate and claim p99 within 20 %), each index's size
along the way, and whether the table's size followed the retention rather than the
total.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_app, claim_times  # noqa: E402
from benchmarks.interrupt import pause, stop_on_signals  # noqa: E402
from benchmarks.pgstats import ClaimProbe, index_sizes, quantiles, table_stats  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.run import Bench

CHUNK = 100_000  # jobs per enqueue transaction
BACKLOG = 1_000_000  # the producer tops the backlog up to this, in chunks
WORKERS = 2
# Short enough that pruning runs all along (and the table's size is bounded by it).
RETENTION = ("--keep-succeeded", "60s", "--prune-interval", "5")

# Jobs enqueued and not yet finished, from the job counters (O(queues)): a count(*) over
# a million rows took 0.7 s of three processes, and asked every 0.2 s by the producer
# and every 0.5 s here, it kept about a core of this machine's two busy with the
# benchmark's own questions.
UNFINISHED = "SELECT COALESCE(sum(queued + running), 0)::bigint FROM pgqueue.queue_stats"


# The span of ids in the table: what retention and the backlog keep, whatever the total.
# Indexes over ids (the primary key, jobs_queue_id_idx) hold pages over that span only.
WINDOW = "SELECT COALESCE(max(id) - min(id) + 1, 0) FROM pgqueue.jobs"


# Whether a vacuum of the jobs table runs now: a vacuum that runs all the time is one that
# cannot keep up with the dead row versions (see migration 0021).
VACUUMING = """
SELECT EXISTS (SELECT FROM pg_stat_progress_vacuum WHERE relid = 'pgqueue.jobs'::regclass)
"""


@dataclass(slots=True)
class Step:
    processed: int
    seconds: float
    rate: float
    claims: int  # the workers' claims in the step
    claim_p50_ms: float  # theirs
    claim_p99_ms: float
    probe_p99_ms: float
    full_p50_ms: float
    heap_mb: float
    index_mb: float
    window: int  # ids from the oldest job in the table to the newest
    live: int
    dead: int
    autovacuums: int
    vacuuming: float  # the part of the step a vacuum of pgqueue.jobs was running

    def line(self) -> str:
        return (
            f"{self.processed:>11,}  {self.rate:>9,.0f} jobs/s  {self.claims:>6,} claims "
            f"p50/p99 {self.claim_p50_ms:6.2f}/{self.claim_p99_ms:6.2f} ms  probe p99 "
            f"{self.probe_p99_ms:6.2f} ms  full p50 "
            f"{self.full_p50_ms:7.2f} ms  heap {self.heap_mb:7.1f} MB"
            f"  indexes {self.index_mb:7.1f} MB  window {self.window:>10,} ids"
            f" ({self.index_mb * 2**20 / max(self.window, 1):5.1f} B of index per id)"
            f"  live {self.live:>10,}  dead {self.dead:>9,}"
            f"  autovacuums {self.autovacuums:>3} (vacuuming {self.vacuuming:4.0%})"
        )


async def _produce(bench: Bench, total: int, enqueued: list[int], stop: asyncio.Event) -> None:
    """Enqueue ``total`` jobs in chunks, keeping the backlog under :data:`BACKLOG`."""
    queue = bench_app.queue
    while enqueued[0] < total and not stop.is_set():
        if await bench.admin.fetchval(UNFINISHED) > BACKLOG - CHUNK:
            await asyncio.sleep(0.2)
            continue
        n = min(CHUNK, total - enqueued[0])
        specs = [bench_app.noop.job(i=enqueued[0] + i) for i in range(n)]
        await queue.enqueue_many(specs, conn=bench.admin)
        enqueued[0] += n


async def soak(bench: Bench, total: int, step_size: int = 1_000_000) -> list[Step]:
    import asyncpg  # noqa: PLC0415

    from benchmarks.run import say  # noqa: PLC0415

    say(
        f"\n== flat cost: {total:,} no-op jobs, {WORKERS} worker processes (defaults, "
        f"retention {' '.join(RETENTION)}), backlog kept under {BACKLOG:,} =="
    )
    await bench.reset()
    probe_conn = await asyncpg.connect(bench.dsn)
    stats_conn = await asyncpg.connect(bench.dsn)
    probe = ClaimProbe(probe_conn, bench_app.noop.queue)
    stop = asyncio.Event()
    enqueued = [0]
    steps: list[Step] = []
    indexes: list[dict[str, float]] = []
    times_dir = bench.log_dir / "claim-times"
    times_dir.mkdir(exist_ok=True)
    times = claim_times.ClaimTimes(times_dir)
    os.environ[claim_times.ENV] = str(times_dir)  # the workers' (bench_app.py)
    try:
        procs = await bench.start_workers(WORKERS, RETENTION)
    finally:
        del os.environ[claim_times.ENV]
    producer = asyncio.create_task(_produce(bench, total, enqueued, stop))
    prober = asyncio.create_task(probe.run(stop))
    with stop_on_signals(say) as interrupted:
        try:
            mark, mark_at = 0, time.monotonic()
            ticks = vacuum_ticks = 0  # looks at pg_stat_progress_vacuum in the step
            while mark < total:
                if await pause(interrupted, 0.5):
                    break
                ticks += 1
                vacuum_ticks += bool(await stats_conn.fetchval(VACUUMING))
                bench._check_alive(procs)  # noqa: SLF001 - the benchmark's own helper
                if producer.done() and producer.exception() is not None:
                    raise producer.exception()  # type: ignore[misc]
                processed = enqueued[0] - await stats_conn.fetchval(UNFINISHED)
                if processed < min(mark + step_size, total):
                    continue
                now = time.monotonic()
                table = await table_stats(stats_conn)
                indexes.append(await index_sizes(stats_conn))
                claims = times.take()
                p50, p99 = quantiles(claims)
                _, probe_p99 = quantiles(probe.take())
                full_p50, _ = quantiles(probe.take_full())
                step = Step(
                    processed=processed,
                    seconds=now - mark_at,
                    rate=(processed - mark) / (now - mark_at),
                    claims=len(claims),
                    claim_p50_ms=p50,
                    claim_p99_ms=p99,
                    probe_p99_ms=probe_p99,
                    full_p50_ms=full_p50,
                    heap_mb=table.heap_mb,
                    index_mb=table.index_mb,
                    window=await stats_conn.fetchval(WINDOW),
                    live=table.live,
                    dead=table.dead,
                    autovacuums=table.autovacuums,
                    vacuuming=vacuum_ticks / max(ticks, 1),
                )
                steps.append(step)
                say("  " + step.line())
                mark, mark_at = processed, now
                ticks = vacuum_ticks = 0
        finally:
            stop.set()
            await asyncio.gather(producer, prober, return_exceptions=True)
            await bench.stop_workers(procs)
            await probe.close()
            await stats_conn.close()
    _verdict(steps, say)
    _index_growth(indexes, say)
    return steps


def _verdict(steps: list[Step], say: Callable[[str], None]) -> None:
    if len(steps) < 2:
        return
    first, last = steps[0], steps[-1]
    rate = last.rate / first.rate
    p99 = last.claim_p99_ms / first.claim_p99_ms
    probe = last.probe_p99_ms / first.probe_p99_ms
    biggest = max(s.heap_mb + s.index_mb for s in steps)
    met = rate >= 0.8 and p99 <= 1.2
    size = first.heap_mb + first.index_mb, last.heap_mb + last.index_mb
    say(
        f"  last step against the first: rate {rate:.2f}x, the workers' claim p99 "
        f"{p99:.2f}x (goal: within 20%: {'met' if met else 'NOT met'}); the probe's p99 "
        f"{probe:.2f}x"
    )
    say(
        f"  pgqueue.jobs at most {biggest:,.0f} MB (heap and indexes) over "
        f"{last.processed:,} jobs; first step {size[0]:,.0f} MB, last {size[1]:,.0f} MB"
    )


def _index_growth(indexes: list[dict[str, float]], say: Callable[[str], None]) -> None:
    """Each index of pgqueue.jobs: its size at the first step, its largest, its last."""
    if len(indexes) < 2:
        return
    say("  indexes of pgqueue.jobs (MB): first step, largest, last step")
    for name in indexes[0]:
        sizes = [step.get(name, float("nan")) for step in indexes]
        short = name.removeprefix("pgqueue.")
        say(f"    {short:<30} {sizes[0]:8.1f} {max(sizes):8.1f} {sizes[-1]:8.1f}")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.database import scratch_database  # noqa: PLC0415
    from benchmarks.run import FULL, Bench  # noqa: PLC0415
    from pgqueue.logs import configure_logging  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a server to run on (a scratch database is made there)")
    parser.add_argument("--jobs", type=int, default=10_000_000, help="jobs in all")
    parser.add_argument("--step", type=int, default=1_000_000, help="jobs per row of figures")
    args = parser.parse_args(argv)
    configure_logging("warning")
    started = time.perf_counter()

    async def run(dsn: str, log_dir: Path) -> None:
        bench = Bench(dsn, FULL, log_dir)
        await bench.open()
        try:
            await soak(bench, args.jobs, args.step)
        finally:
            await bench.close()

    with (
        scratch_database(args.dsn) as (dsn, _where),
        tempfile.TemporaryDirectory(prefix="pgqbench-logs-") as log_dir,
    ):
        asyncio.run(run(dsn, Path(log_dir)))
    print(f"the run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
