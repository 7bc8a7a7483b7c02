"""A long transaction against a busy queue: ``make soak-horizon`` (not part of ``make test``).

    .venv/bin/python -m benchmarks.long_transaction                # 60 s, 10 min held, drain
    .venv/bin/python -m benchmarks.long_transaction --quick        # 20 s, 60 s held, drain
    .venv/bin/python -m benchmarks.long_transaction --dsn postgresql://postgres@127.0.0.1/postgres

Producers enqueue no-op jobs in small batches at a steady rate (2,000/s by default) while 2
worker processes (their defaults) drain them. After a warm-up (then VACUUM ANALYZE, so
that the phases start from a table with statistics, as a deployed one has) and a quiet
phase, one REPEATABLE READ transaction reads ``pgqueue.jobs`` and stays open, as a slow
report or a forgotten psql session does: it pins the xmin horizon, so no row version any
job leaves behind can be vacuumed until it ends. Every interval prints the jobs processed
per second, the backlog, the claim's p50/p99 and the full-scan claim's p50
(benchmarks/pgstats.py's ClaimProbe: the workers' claim from a cursor, and from the head
of the queue as a worker does once per full-scan period), the server's CPU (the
postmaster and its children, read from /proc: a local server only), dead tuples and the
heap and index sizes of ``pgqueue.jobs``. At the end, per phase (before, held, after):
throughput, the claims' p99, CPU, pickup p50 (enqueue to start, of a sample of the jobs
enqueued in that phase) and the loss while the horizon was held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_app  # noqa: E402
from benchmarks.interrupt import pause, stop_on_signals  # noqa: E402
from benchmarks.pgstats import (  # noqa: E402
    ClaimProbe,
    ServerCpu,
    hold_horizon,
    quantiles,
    table_stats,
)

if TYPE_CHECKING:
    import asyncpg

    from benchmarks.run import Bench

WORKERS = 2
PRODUCERS = 4  # connections enqueueing, each a share of the rate
TICK_JOBS = 10  # jobs a producer enqueues at a time (the first one's pickup is sampled)
UNFINISHED = "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running')"
PHASES = ("before", "held", "after")
WARMUP_SECONDS = 20.0


@dataclass(slots=True)
class Phase:
    name: str
    seconds: float = 0.0
    processed: int = 0
    claims: list[float] = field(default_factory=list)  # the probe's cursor claims, ms
    full: list[float] = field(default_factory=list)  # the probe's full-scan claims, ms
    cpu_seconds: float | None = 0.0
    dead: int = 0
    size_mb: float = 0.0
    sampled: list[int] = field(default_factory=list)  # ids enqueued in this phase

    def throughput(self) -> float:
        return self.processed / self.seconds if self.seconds else float("nan")


@dataclass(slots=True)
class Producers:
    """Enqueue at ``rate`` jobs/s in all, in small batches (one insert and commit each)
    at a steady pace, the ids of a sample kept per phase."""

    rate: float
    enqueued: int = 0
    phase: str = "warm-up"
    sampled: dict[str, list[int]] = field(
        default_factory=lambda: {p: [] for p in ("warm-up", *PHASES)}
    )

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._one(i, stop) for i in range(PRODUCERS)))

    async def _one(self, index: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = PRODUCERS * TICK_JOBS / self.rate
        start, n = loop.time() + index * interval / PRODUCERS, 0
        while not stop.is_set():
            if (wait := start + n * interval - loop.time()) > 0:
                await asyncio.sleep(wait)
            jobs = [bench_app.noop.job(i=n * TICK_JOBS + i) for i in range(TICK_JOBS)]
            written = await bench_app.queue.enqueue_many(jobs)
            self.enqueued += len(written)
            self.sampled[self.phase].append(written[0].id)
            n += 1


async def _pickup_p50_ms(conn: asyncpg.Connection[Any], ids: list[int]) -> float:
    rows = await conn.fetch(
        "SELECT (EXTRACT(EPOCH FROM started_at - created_at) * 1000)::float8"
        " FROM pgqueue.jobs WHERE id = ANY ($1::bigint[]) AND started_at IS NOT NULL",
        ids,
    )
    return statistics.median(r[0] for r in rows) if rows else float("nan")


async def horizon(bench: Bench, *, rate: float, before: float, hold: float, after: float,
                  interval: float) -> dict[str, Phase]:  # fmt: skip
    import asyncpg  # noqa: PLC0415

    from benchmarks.run import say  # noqa: PLC0415

    say(
        f"\n== a long transaction: {rate:,.0f} jobs/s offered ({TICK_JOBS} an insert), {WORKERS} "
        f"workers (defaults); {before:.0f} s, then the horizon held {hold:.0f} s, then "
        f"until drained (at most {after:.0f} s) =="
    )
    await bench.reset()
    stats = await asyncpg.connect(bench.dsn)
    probe = ClaimProbe(await asyncpg.connect(bench.dsn), bench_app.noop.queue)
    cpu = await ServerCpu.of(stats)
    producers = Producers(rate)
    phases = {name: Phase(name) for name in PHASES}
    stop, release = asyncio.Event(), asyncio.Event()
    procs = await bench.start_workers(WORKERS)
    tasks = [asyncio.create_task(producers.run(stop)), asyncio.create_task(probe.run(stop))]
    holder: asyncio.Task[None] | None = None
    say(
        f"  {'phase':<7}{'t':>6}  {'processed/s':>11}  {'backlog':>9}  claim p50/p99 ms  "
        f"{'full p50':>8}  "
        f"{'pg cpu':>7}  {'dead':>9}  {'heap+idx MB':>11}"
    )
    with stop_on_signals(say) as interrupted:
        try:
            # A fresh table has no statistics yet, and the plans made meanwhile last until
            # autovacuum first runs (up to a minute): warm up, then give it its statistics.
            await pause(interrupted, WARMUP_SECONDS)
            await stats.execute("VACUUM ANALYZE pgqueue.jobs")
            probe.take()
            probe.take_full()
            started = time.monotonic()
            done_before = producers.enqueued - await stats.fetchval(UNFINISHED)
            cpu_before = cpu.seconds()
            ends = {"before": before, "held": before + hold, "after": before + hold + after}
            for name in PHASES:
                if interrupted.is_set():
                    break
                phase = phases[name]
                producers.phase = name
                if name == "held":
                    holder = asyncio.create_task(hold_horizon(bench.dsn, release))
                if name == "after":
                    release.set()
                    stop.set()  # the producers stop: the backlog drains
                phase_start, phase_done, phase_cpu = time.monotonic(), done_before, cpu_before
                while time.monotonic() - started < ends[name]:
                    if await pause(interrupted, interval):
                        break
                    bench._check_alive(procs)  # noqa: SLF001 - the benchmark's own helper
                    backlog = await stats.fetchval(UNFINISHED)
                    done, cpu_now = producers.enqueued - backlog, cpu.seconds()
                    table = await table_stats(stats)
                    samples, full = probe.take(), probe.take_full()
                    p50, p99 = quantiles(samples)
                    full_p50, _ = quantiles(full)
                    phase.claims += samples
                    phase.full += full
                    share = (
                        "     -"
                        if cpu_now is None or cpu_before is None
                        else f"{100 * (cpu_now - cpu_before) / interval:5.0f}%"
                    )
                    say(
                        f"  {name:<7}{time.monotonic() - started:6.0f}  "
                        f"{(done - done_before) / interval:11,.0f}  {backlog:9,}  "
                        f"{p50:7.2f}/{p99:8.2f}  {full_p50:8.1f}  {share:>7}  {table.dead:9,}  "
                        f"{table.heap_mb + table.index_mb:11,.0f}"
                    )
                    done_before, cpu_before = done, cpu_now
                    phase.dead, phase.size_mb = table.dead, table.heap_mb + table.index_mb
                    if name == "after" and backlog == 0:
                        break
                phase.seconds = time.monotonic() - phase_start
                phase.processed = done_before - phase_done
                phase.cpu_seconds = (
                    None if cpu_before is None or phase_cpu is None else cpu_before - phase_cpu
                )
        finally:
            stop.set()
            release.set()
            await asyncio.gather(*tasks, *([holder] if holder else []), return_exceptions=True)
            await bench.stop_workers(procs)
            await probe.close()
    for name in PHASES:
        phases[name].sampled = producers.sampled[name]
    await _summary(stats, phases, rate, say)
    await stats.close()
    return phases


async def _summary(
    conn: asyncpg.Connection[Any], phases: dict[str, Phase], rate: float, say: Any
) -> None:
    say(
        f"  {'phase':<7}{'seconds':>8}{'jobs/s':>9}  {'claim p99':>9}  {'full p99':>9}  "
        f"{'pg cpu':>7}  "
        f"{'pickup p50':>11}"
    )
    for phase in phases.values():
        _, p99 = quantiles(phase.claims)
        _, full_p99 = quantiles(phase.full)
        cpu = (
            "      -"
            if phase.cpu_seconds is None
            else f"{100 * phase.cpu_seconds / phase.seconds:6.0f}%"
        )
        pickup = await _pickup_p50_ms(conn, phase.sampled) if phase.sampled else float("nan")
        say(
            f"  {phase.name:<7}{phase.seconds:8.0f}{phase.throughput():9,.0f}  {p99:7.2f}ms  "
            f"{full_p99:7.1f}ms  "
            f"{cpu:>7}  {pickup:9,.1f}ms"
        )
    before, held = phases["before"].throughput(), phases["held"].throughput()
    loss = 1 - held / before if before else float("nan")
    verdict = "met" if loss <= 0.20 else "NOT met"
    say(
        f"  throughput while the horizon was held: {held:,.0f} jobs/s against {before:,.0f} "
        f"before ({rate:,.0f} offered): a loss of {loss:.0%} (goal: at most 20%: {verdict})"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.database import scratch_database  # noqa: PLC0415
    from benchmarks.run import FULL, Bench  # noqa: PLC0415
    from pgqueue.embedded import DSN_ENV  # noqa: PLC0415
    from pgqueue.logs import configure_logging  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a server to run on (a scratch database is made there)")
    parser.add_argument("--rate", type=float, default=2000.0, help="jobs/s offered")
    parser.add_argument("--before", type=float, default=60.0, help="seconds before the hold")
    parser.add_argument("--hold", type=float, default=600.0, help="seconds the horizon is held")
    parser.add_argument("--after", type=float, default=300.0, help="at most, to drain after")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds a line")
    parser.add_argument("--quick", action="store_true", help="20 s, 60 s held, 60 s after")
    parser.add_argument("--keep-logs", type=Path, help="keep the workers' logs in this directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.before, args.hold, args.after, args.interval = 20.0, 60.0, 60.0, 5.0
    configure_logging("warning")
    started = time.perf_counter()

    async def run(dsn: str, log_dir: Path) -> None:
        bench = Bench(dsn, FULL, log_dir)
        await bench.open()
        try:
            await horizon(
                bench,
                rate=args.rate,
                before=args.before,
                hold=args.hold,
                after=args.after,
                interval=args.interval,
            )
        finally:
            await bench.close()

    with (
        scratch_database(args.dsn) as (dsn, _where),
        tempfile.TemporaryDirectory(prefix="pgqbench-logs-") as log_dir,
    ):
        os.environ[DSN_ENV] = dsn  # bench_app's Queue takes the scratch database
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(dsn, args.keep_logs or Path(log_dir)))
    print(f"the run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
