"""pgqueue's benchmark: enqueue rates, no-op processing rates and pickup latency, each
beside its bound, the same SQL run bare on the same driver.

    .venv/bin/python benchmarks/run.py            # ~110 s on 2 cores (also: make bench)
    .venv/bin/python benchmarks/run.py --quick    # a ~20 s smoke run
    .venv/bin/python benchmarks/run.py --dsn postgresql://user@host/postgres

Without --dsn a fresh embedded PostgreSQL is started in a temporary directory and
stopped at the end. Either way the benchmark runs in a scratch database
``pgqueue_bench_<pid>``, created, migrated, and dropped at the end, so nothing else on the
server is touched. Commits are durable: ``synchronous_commit = on`` is set on the scratch
database and checked before anything is measured. Workers are real ``pgqueue worker``
processes, run first with their defaults (no tuning flag, info-level JSON logs) and then
with the settings the README recommends for a high-volume queue. The figures are printed
as they come, then as a table, and written as JSON to ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/ on the path
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_app  # noqa: E402
from benchmarks.database import psycopg_synchronous_commit, scratch_database  # noqa: E402
from benchmarks.flow import flow_limits  # noqa: E402
from benchmarks.report import Figure, Target, machine, print_machine, summary_table  # noqa: E402
from benchmarks.workflows import workflow_costs  # noqa: E402
from pgqueue.embedded import DSN_ENV  # noqa: E402
from pgqueue.jobs import JobSpec  # noqa: E402
from pgqueue.logs import configure_logging  # noqa: E402
from pgqueue.sql import query  # noqa: E402
from pgqueue.worker.core import DEFAULT_BATCH_SIZE  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

RESULTS = ROOT / "benchmarks" / "results" / "latest.json"
QUEUE = "bench"
COPY_COLUMNS = ["queue", "task", "args", "priority", "max_attempts"]
COUNT_LISTENERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_start >= $1
  AND query LIKE 'LISTEN %pgqueue%'  -- its last LISTEN (enqueued, then cancel)
"""


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of everything to do."""

    one_seconds: float  # each one-at-a-time variant, per turn
    one_turns: int  # the variants of a comparison take turns this many times
    bulk_jobs: int  # per turn
    bulk_batch: int
    bulk_turns: int
    process_jobs: int
    latency_seconds: float
    latency_rate: float  # jobs per second, one at a time
    # Beside the defaults: what the README's Workers section recommends for a queue of
    # many short jobs (failures and retries are still logged, at warning and error).
    recommended: tuple[str, ...] = ("--log-level", "warning")
    batch_size: int = DEFAULT_BATCH_SIZE  # the bare loop's claims: the worker's default
    # Flow control's cases (benchmarks/flow.py) and the unlimited run they stand beside,
    # this many times in turn: each figure is the round with the median fraction.
    flow_rounds: int = 3


FULL = Plan(
    one_seconds=0.5,
    one_turns=12,
    bulk_jobs=100_000,
    bulk_batch=10_000,
    bulk_turns=3,
    process_jobs=50_000,
    latency_seconds=10.0,
    latency_rate=100.0,
)
QUICK = Plan(
    one_seconds=0.5,
    one_turns=1,
    bulk_jobs=20_000,
    bulk_batch=10_000,
    bulk_turns=1,
    process_jobs=10_000,
    latency_seconds=3.0,
    latency_rate=100.0,
    flow_rounds=1,
)


@dataclass(frozen=True, slots=True)
class Rate:
    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.jobs + other.jobs, self.seconds + other.seconds)


@dataclass(frozen=True, slots=True)
class Processed:
    """Jobs processed, and the CPU time the processing processes spent on them."""

    rate: Rate
    cpu_seconds: float | None

    @property
    def cpu_per_job_us(self) -> float | None:
        if self.cpu_seconds is None:
            return None
        return round(self.cpu_seconds / self.rate.jobs * 1e6, 1)


def cpu_seconds(procs: list[asyncio.subprocess.Process]) -> float | None:
    """User plus system CPU time the processes have used so far (Linux's /proc)."""
    total = 0.0
    for proc in procs:
        try:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # fields 3 onwards: utime is 14, stime 15
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _troubles(log: str) -> list[str]:
    """The lines of a worker's log at warning or above, and any that is not a JSON event
    (a traceback): the workers log at info by default, a line per job."""
    troubles = []
    for line in log.splitlines():
        try:
            level = json.loads(line).get("level")
        except (ValueError, AttributeError):
            level = None
        if level not in ("debug", "info"):
            troubles.append(line)
    return troubles


def say(text: str = "") -> None:
    print(text, flush=True)


# --- timing --------------------------------------------------------------------------------


async def for_a_while(op: Callable[[int], Awaitable[object]], seconds: float) -> Rate:
    """``await op(0)``, ``op(1)``, ... one after the other for about ``seconds``."""
    count, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < seconds:
        await op(count)
        count += 1
        elapsed = time.perf_counter() - start
    return Rate(count, elapsed)


def for_a_while_sync(op: Callable[[int], object], seconds: float) -> Rate:
    count, elapsed = 0, 0.0
    start = time.perf_counter()
    while elapsed < seconds:
        op(count)
        count += 1
        elapsed = time.perf_counter() - start
    return Rate(count, elapsed)


def _turns(turns: int, names: list[str]) -> Iterator[str]:
    """Every variant ``turns`` times, interleaved, in alternating order: a drift in the
    machine's speed (other processes come and go) then favours none of them."""
    for turn in range(turns):
        yield from names if turn % 2 == 0 else reversed(names)


# --- the benchmark ---------------------------------------------------------------------


class Bench:
    """One run: an admin connection, the worker processes it starts, the figures."""

    def __init__(self, dsn: str, plan: Plan, log_dir: Path) -> None:
        self.dsn = dsn
        self.plan = plan
        self.log_dir = log_dir
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self._admin: asyncpg.Connection[Any] | None = None
        self._procs: list[asyncio.subprocess.Process] = []
        self._logs: dict[int, Path] = {}  # by pid

    @property
    def admin(self) -> asyncpg.Connection[Any]:
        assert self._admin is not None  # noqa: S101 - set in open()
        return self._admin

    async def open(self) -> None:
        self._admin = await asyncpg.connect(self.dsn)

    async def close(self) -> None:
        for proc in self._procs:  # only left here when a phase failed
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await bench_app.queue.close()
        if self._admin is not None:
            await self._admin.close()

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        say(f"  {figure.line()}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"  ! {text}")

    async def reset(self) -> None:
        """An empty table, and a checkpoint so that no phase pays for another's writes."""
        # CASCADE: job_steps references jobs (its rows go with them).
        await self.admin.execute("TRUNCATE pgqueue.jobs CASCADE")
        with suppress(asyncpg.InsufficientPrivilegeError):
            await self.admin.execute("CHECKPOINT")

    async def server_info(self, where: str) -> dict[str, Any]:
        row = await self.admin.fetchrow(
            "SELECT version(), current_setting('synchronous_commit'), current_setting('fsync'),"
            " current_setting('wal_sync_method'), current_setting('shared_buffers')"
        )
        assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
        via_psycopg = await asyncio.to_thread(psycopg_synchronous_commit, self.dsn)
        if row[1] != "on" or via_psycopg != "on":
            raise SystemExit(
                f"synchronous_commit is {row[1]!r} (asyncpg) / {via_psycopg!r} (psycopg), not "
                "'on': a role or server setting overrides the database's; the figures would "
                "not be for durable commits"
            )
        info = {
            "version": row[0].split(" on ")[0],
            "where": where,
            "synchronous_commit": row[1],
            "fsync": row[2],
            "wal_sync_method": row[3],
            "shared_buffers": row[4],
        }
        if row[2] != "on":
            self.notes.append("fsync is off on this server: its commits are not durable")
        return info

    # --- 1. enqueue, one at a time --------------------------------------------------------

    async def one_at_a_time(self) -> None:
        say("\n== enqueue, one job per transaction ==")
        plan, enqueue_sql = self.plan, query("enqueue")
        noop = bench_app.noop
        bare = await asyncpg.connect(self.dsn)
        bare_sync: psycopg.Connection[Any] = await asyncio.to_thread(
            functools.partial(psycopg.connect, self.dsn, autocommit=True)
        )
        cursor = psycopg.RawCursor(bare_sync)

        # The enqueue statement's parameters as the job's one definition orders them (so a
        # new job option cannot break the bare loop), built without any checking.
        def bare_params(i: int) -> tuple[Any, ...]:
            return JobSpec("noop", f'{{"i":{i}}}', QUEUE).insert_params()

        async def bare_async_op(i: int) -> None:
            await bare.fetch(enqueue_sql, *bare_params(i))

        async def library_async_op(i: int) -> None:
            await noop.enqueue(i=i)

        def bare_sync_op(i: int) -> None:
            cursor.execute(enqueue_sql, bare_params(i))
            cursor.fetchone()

        def library_sync_op(i: int) -> None:
            noop.enqueue_sync(i=i)

        async_ops = {"bare": bare_async_op, "library": library_async_op}
        sync_ops = {"bare": bare_sync_op, "library": library_sync_op}
        async_rates = dict.fromkeys(async_ops, Rate(0, 0.0))
        sync_rates = dict.fromkeys(sync_ops, Rate(0, 0.0))
        try:
            for op in async_ops.values():  # warm up: pools, prepared statements
                await for_a_while(op, 0.2)
            for sync_op in sync_ops.values():
                await asyncio.to_thread(for_a_while_sync, sync_op, 0.2)
            for name in _turns(plan.one_turns, list(async_ops)):
                async_rates[name] += await for_a_while(async_ops[name], plan.one_seconds)
            for name in _turns(plan.one_turns, list(sync_ops)):
                sync_rates[name] += await asyncio.to_thread(
                    for_a_while_sync, sync_ops[name], plan.one_seconds
                )
        finally:
            await bare.close()
            cursor.close()
            await asyncio.to_thread(bare_sync.close)
        one_target = Target("min_fraction", 0.90)
        bare_async = async_rates["bare"].per_second
        self.add(
            Figure(
                key="enqueue_one_async",
                label="enqueue one at a time, async (await noop.enqueue)",
                value=async_rates["library"].per_second,
                unit="jobs/s",
                bound=bare_async,
                bound_label="bare asyncpg INSERT-and-commit",
                target=one_target,
                peer_key="enqueue_one",
                detail={"jobs": async_rates["library"].jobs, "bare_jobs": async_rates["bare"].jobs},
            )
        )
        self.add(
            Figure(
                key="enqueue_one_sync",
                label="enqueue one at a time, sync (noop.enqueue_sync)",
                value=sync_rates["library"].per_second,
                unit="jobs/s",
                bound=sync_rates["bare"].per_second,
                bound_label="bare psycopg INSERT-and-commit",
                target=one_target,
                peer_key="enqueue_one",
                detail={"jobs": sync_rates["library"].jobs, "bare_jobs": sync_rates["bare"].jobs},
            )
        )
        say(f"  (a bare durable INSERT-and-commit takes {1e3 / bare_async:.2f} ms here)")
        await self.reset()

    # --- 1b. enqueue in bulk ----------------------------------------------------------------

    async def bulk(self) -> None:
        plan = self.plan
        say(
            f"\n== enqueue in bulk: {plan.bulk_jobs:,} jobs, enqueue_many of "
            f"{plan.bulk_batch:,} per call, {plan.bulk_turns} turn(s) each =="
        )
        noop, queue = bench_app.noop, bench_app.queue
        bare = await asyncpg.connect(self.dsn)

        def batches() -> Iterator[range]:
            for start in range(0, plan.bulk_jobs, plan.bulk_batch):
                yield range(start, min(start + plan.bulk_batch, plan.bulk_jobs))

        async def library() -> tuple[float, float]:
            build = insert = 0.0
            for batch in batches():
                t0 = time.perf_counter()
                specs = [noop.job(i=i) for i in batch]
                t1 = time.perf_counter()
                await queue.enqueue_many(specs)
                build, insert = build + t1 - t0, insert + time.perf_counter() - t1
            return build, insert

        async def bare_copy() -> tuple[float, float]:
            build = insert = 0.0
            for batch in batches():
                t0 = time.perf_counter()
                records = [(QUEUE, "noop", f'{{"i":{i}}}', 0, 3) for i in batch]
                t1 = time.perf_counter()
                await bare.copy_records_to_table(
                    "jobs", schema_name="pgqueue", columns=COPY_COLUMNS, records=records
                )
                build, insert = build + t1 - t0, insert + time.perf_counter() - t1
            return build, insert

        variants = {"bare": bare_copy, "library": library}
        spent = dict.fromkeys(variants, (0.0, 0.0))
        try:
            for variant in variants.values():  # warm up
                await variant()
                await self.reset()
            for name in _turns(plan.bulk_turns, list(variants)):
                build, insert = await variants[name]()
                spent[name] = (spent[name][0] + build, spent[name][1] + insert)
                await self.reset()
        finally:
            await bare.close()
        jobs = plan.bulk_jobs * plan.bulk_turns
        (lib_build, lib_insert), (bare_build, bare_insert) = spent["library"], spent["bare"]
        self.add(
            Figure(
                key="enqueue_bulk",
                label="bulk enqueue (building the JobSpecs included)",
                value=jobs / (lib_build + lib_insert),
                unit="jobs/s",
                bound=jobs / (bare_build + bare_insert),
                bound_label="bare asyncpg COPY (building its tuples included)",
                target=Target("min", 100_000),
                peer_key="enqueue_bulk",
                detail={"jobs": jobs, "batch": plan.bulk_batch, "build_seconds": lib_build},
            )
        )
        self.add(
            Figure(
                key="enqueue_bulk_insert_only",
                label="bulk enqueue, enqueue_many call alone",
                value=jobs / lib_insert,
                unit="jobs/s",
                bound=jobs / bare_insert,
                bound_label="bare COPY call alone",
                target=Target("min", 100_000),
                detail={"jobs": jobs, "build_jobs_per_s": round(jobs / lib_build)},
            )
        )
        say(
            f"  (building the JobSpecs alone: {jobs / lib_build:,.0f} jobs/s; "
            f"building COPY tuples: {jobs / bare_build:,.0f}/s)"
        )

    # --- 2. processing ----------------------------------------------------------------------

    async def _spawn(
        self, args: list[str], *, stdin: int | None = None, stdout: int | None = None
    ) -> asyncio.subprocess.Process:
        log = self.log_dir / f"process-{len(self._procs) + 1}.log"
        with log.open("wb") as log_file:  # the child keeps its own copy of the descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                cwd=ROOT,
                stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=stdout if stdout is not None else log_file,
                stderr=log_file,
            )
        self._procs.append(proc)
        self._logs[proc.pid] = log
        return proc

    def _log_of(self, proc: asyncio.subprocess.Process) -> str:
        return self._logs[proc.pid].read_text(errors="replace").strip()

    def _check_alive(self, procs: list[asyncio.subprocess.Process]) -> None:
        for proc in procs:
            if proc.returncode is not None:
                raise RuntimeError(
                    f"process {proc.pid} exited with {proc.returncode}:\n{self._log_of(proc)}"
                )

    async def start_workers(
        self, count: int, settings: tuple[str, ...] = ()
    ) -> list[asyncio.subprocess.Process]:
        """``pgqueue worker`` processes, returned once every one is listening; their
        defaults, but for ``settings``."""
        args = ["-m", "pgqueue", "worker", "benchmarks.bench_app:queue", "--dsn", self.dsn]
        args += settings
        spawned = await self.admin.fetchval("SELECT clock_timestamp()")
        procs = [await self._spawn(args) for _ in range(count)]
        deadline = time.monotonic() + 60
        while await self.admin.fetchval(COUNT_LISTENERS, spawned) < count:
            self._check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start listening within 60 s")
            await asyncio.sleep(0.05)
        return procs

    async def stop_workers(self, procs: list[asyncio.subprocess.Process]) -> None:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                self.note(f"worker {proc.pid} ignored SIGTERM for 30 s; killed")
                proc.kill()
                await proc.wait()
            if proc.returncode != 0:
                self.note(f"worker {proc.pid} exited with status {proc.returncode}")
            if lines := _troubles(self._log_of(proc)):
                self.note(f"worker {proc.pid} logged {len(lines)} line(s) at warning or above:")
                for line in lines[:10]:
                    say(f"      {line}")

    async def fill(self, jobs: int) -> datetime:
        """Enqueue ``jobs`` no-op jobs in one transaction; the database's clock just after
        the commit."""
        specs = [bench_app.noop.job(i=i) for i in range(jobs)]
        await bench_app.queue.enqueue_many(specs, conn=self.admin)
        committed: datetime = await self.admin.fetchval("SELECT clock_timestamp()")
        return committed

    async def wait_until_done(self, jobs: int, procs: list[asyncio.subprocess.Process]) -> None:
        deadline = time.monotonic() + max(120.0, jobs / 200)
        done_sql = "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'"
        while await self.admin.fetchval(done_sql) < jobs:
            self._check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{jobs:,} jobs were not all done in time")
            await asyncio.sleep(0.2)

    async def processed_rate(self, jobs: int, since: datetime, label: str) -> Rate:
        """``jobs`` over the time from ``since`` to the last completion, checking that
        every job ran exactly once."""
        row = await self.admin.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
            " count(*) FILTER (WHERE attempts <> 1),"
            " EXTRACT(EPOCH FROM max(finished_at) - $1::timestamptz)::float8"
            " FROM pgqueue.jobs",
            since,
        )
        assert row is not None  # noqa: S101 - an aggregate returns one row
        succeeded, rerun, seconds = row
        if succeeded != jobs or rerun:
            self.note(f"{label}: {succeeded:,} of {jobs:,} succeeded, {rerun:,} ran more than once")
        return Rate(jobs, seconds)

    async def process_with_workers(self, count: int, settings: tuple[str, ...]) -> Processed:
        await self.reset()
        procs = await self.start_workers(count, settings)
        try:
            cpu_before = cpu_seconds(procs)
            since = await self.fill(self.plan.process_jobs)
            await self.wait_until_done(self.plan.process_jobs, procs)
            cpu_after = cpu_seconds(procs)
        finally:
            await self.stop_workers(procs)
        rate = await self.processed_rate(self.plan.process_jobs, since, f"{count} worker(s)")
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        return Processed(rate, cpu)

    async def process_bare(self, count: int) -> Processed:
        await self.reset()
        pipe = asyncio.subprocess.PIPE
        args = ["-m", "benchmarks.raw_worker", self.dsn, QUEUE, str(self.plan.batch_size)]
        procs = [await self._spawn(args, stdin=pipe, stdout=pipe) for _ in range(count)]
        for proc in procs:
            assert proc.stdout is not None  # noqa: S101 - both are pipes
            ready = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if ready.strip() != b"ready":
                self._check_alive(procs)
                raise RuntimeError(f"bare worker said {ready!r}")
        since = await self.fill(self.plan.process_jobs)
        for proc in procs:
            assert proc.stdin is not None  # noqa: S101
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        done, cpu = 0, 0.0
        for proc in procs:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"bare worker failed:\n{self._log_of(proc)}")
            jobs, seconds = out.split()
            done, cpu = done + int(jobs), cpu + float(seconds)
        if done != self.plan.process_jobs:
            self.note(f"bare workers completed {done:,} of {self.plan.process_jobs:,} jobs")
        rate = await self.processed_rate(self.plan.process_jobs, since, f"{count} bare")
        return Processed(rate, cpu)

    async def processing(self) -> None:
        plan = self.plan
        recommended = " ".join(plan.recommended)
        say(
            f"\n== no-op jobs processed: {plan.process_jobs:,} jobs pre-filled; `pgqueue worker "
            f"APP` with its defaults, then with `{recommended}` =="
        )
        targets = {1: 7_000, 2: 10_000}
        for count in (1, 2):
            noun = "process" if count == 1 else "processes"
            defaults = await self.process_with_workers(count, ())
            tuned = await self.process_with_workers(count, plan.recommended)
            bare = await self.process_bare(count)
            bound_label = f"bare claim+complete loop in {count} {noun}"
            variants = (
                (f"process_{count}", "defaults", defaults, Target("min_fraction", 0.60)),
                (
                    f"process_{count}_recommended",
                    recommended,
                    tuned,
                    Target("min", targets[count]),
                ),
            )
            for key, settings, library, target in variants:
                self.add(
                    Figure(
                        key=key,
                        label=f"no-op jobs processed, {count} worker {noun}, {settings}",
                        value=library.rate.per_second,
                        unit="jobs/s",
                        bound=bare.rate.per_second,
                        bound_label=bound_label,
                        target=target,
                        peer_key=f"process_{count}",
                        detail={
                            "settings": settings,
                            "jobs": library.rate.jobs,
                            "seconds": round(library.rate.seconds, 3),
                            "bare_seconds": round(bare.rate.seconds, 3),
                            "worker_cpu_us_per_job": library.cpu_per_job_us,
                            "bare_cpu_us_per_job": bare.cpu_per_job_us,
                        },
                    )
                )
            cpu = [p.cpu_per_job_us for p in (defaults, tuned, bare)]
            if None not in cpu:
                say(
                    f"  (CPU per job in the worker processes: defaults {cpu[0]:.0f} us, "
                    f"{recommended} {cpu[1]:.0f} us, bare loop {cpu[2]:.0f} us)"
                )
        await self.reset()

    # --- 3. pickup latency --------------------------------------------------------------------

    async def pickup_latency(self) -> None:
        plan = self.plan
        total = round(plan.latency_seconds * plan.latency_rate)
        say(
            f"\n== pickup latency: 1 worker process (defaults), {total:,} jobs enqueued one at "
            f"a time at {plan.latency_rate:,.0f}/s =="
        )
        await self.reset()
        procs = await self.start_workers(1)
        try:
            loop = asyncio.get_running_loop()
            start, interval = loop.time(), 1 / plan.latency_rate
            for i in range(total):
                if (wait := start + i * interval - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await bench_app.noop.enqueue(i=i)
            await self.wait_until_done(total, procs)
        finally:
            await self.stop_workers(procs)
        rows = await self.admin.fetch(
            "SELECT (EXTRACT(EPOCH FROM started_at - created_at) * 1000)::float8"
            " FROM pgqueue.jobs WHERE state = 'succeeded'"
        )
        latencies = sorted(row[0] for row in rows)
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        detail = {
            "jobs": len(latencies),
            "mean_ms": round(statistics.fmean(latencies), 3),
            "max_ms": round(latencies[-1], 3),
            "measure": "started_at - created_at (both the database's clock)",
        }
        for p, target in ((50, 2.0), (95, None), (99, 10.0)):
            self.add(
                Figure(
                    key=f"pickup_p{p}",
                    label=f"pickup latency p{p} (enqueue to start)",
                    value=cuts[p - 1],
                    unit="ms",
                    target=None if target is None else Target("max", target),
                    peer_key=f"pickup_p{p}",
                    detail=detail,
                )
            )
        say(
            f"  (mean {detail['mean_ms']:.2f} ms, max {detail['max_ms']:.2f} ms; created_at is "
            "stamped before the enqueue's own durable commit, which is part of the latency)"
        )
        await self.reset()


async def run(dsn: str, where: str, plan: Plan, log_dir: Path) -> dict[str, Any]:
    bench = Bench(dsn, plan, log_dir)
    await bench.open()
    try:
        info, server = machine(), await bench.server_info(where)
        print_machine(info, server)
        if info["load_average_1m"] >= info["nproc"] / 2:
            bench.note(
                f"the load average was {info['load_average_1m']} on {info['nproc']} CPUs before "
                "the run: other processes are busy, so the figures are lower and noisier"
            )
        started = time.perf_counter()
        await bench.one_at_a_time()
        await bench.bulk()
        await bench.processing()
        await bench.pickup_latency()
        await flow_limits(bench)  # benchmarks/flow.py: limits beside the unlimited figure
        await workflow_costs(bench)  # benchmarks/workflows.py: chains and a fan-in
        elapsed = time.perf_counter() - started
    finally:
        await bench.close()
    width = max(shutil.get_terminal_size((180, 24)).columns, 100)
    say()
    Console(width=width).print(summary_table(bench.figures))
    for text in bench.notes:
        say(f"note: {text}")
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "measuring_seconds": round(elapsed, 1),
        "plan": asdict(plan),
        "machine": info,
        "server": server,
        "figures": {figure.key: figure.as_json() for figure in bench.figures},
        "notes": bench.notes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn",
        help="a server to run on (a scratch database is created there and dropped); "
        "default: a fresh embedded PostgreSQL",
    )
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    configure_logging("warning")
    started = time.perf_counter()
    with (
        scratch_database(args.dsn) as (dsn, where),
        tempfile.TemporaryDirectory(prefix="pgqbench-logs-") as log_dir,
    ):
        os.environ[DSN_ENV] = dsn  # for bench_app's Queue (workers get --dsn as well)
        results = asyncio.run(run(dsn, where, plan, Path(log_dir)))
    results["quick"] = args.quick
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    say(f"\nwrote {args.output}; the run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
