"""A claim cursor against a held xmin horizon: feasibility in raw loops (issue 11).

    .venv/bin/python -m benchmarks.horizon_cursor --mode head            # today's claim_jobs
    .venv/bin/python -m benchmarks.horizon_cursor --mode cursor          # the cursor claim
    .venv/bin/python -m benchmarks.horizon_cursor --mode both --hold 180
    .venv/bin/python -m benchmarks.horizon_cursor --mode cursor --complete by-id

``--complete library`` marks jobs done with complete_succeeded as it is; ``by-id`` with
:data:`COMPLETE_BY_ID`, which finds them by primary key (the library's statement may be
planned as a scan of a partial index on state = 'running', which walks the entry of every
job that left running while the horizon is held).

On a scratch database of the server named by --dsn: producers enqueue no-op jobs at a
fixed offered rate (10 a statement), 2 worker processes claim and complete them in bare
asyncpg loops (claim a batch of up to 100, mark it succeeded; when a claim comes back
short, wait for the enqueue NOTIFY or the poll, as pgqueue's workers do). After a
warm-up, one REPEATABLE READ transaction that has read pgqueue.jobs stays open for
--hold seconds, pinning the xmin horizon.

Modes:

- ``head``: the library's ``claim_jobs`` statement as it is. Every job claimed while the
  horizon is held leaves a dead entry at the head of ``jobs_claim_idx`` that no one can
  remove or mark, and every claim walks them all.
- ``cursor``: each worker remembers, per queue, the index key (priority, run_at, id) of
  the last job it claimed and starts its scan past it (:data:`CURSOR_CLAIM`). A full
  scan from the head (the same statement with the cursor at the head) is made at least
  every T seconds (adaptive: ``--t-min``, doubling while full scans find nothing behind
  the cursor, up to ``--t-max``), and again at once after a full scan that came back
  full with jobs behind the cursor. ``--slack-ms`` starts the cursor scan that much
  run_at behind the cursor, so that jobs committed late by up to that much are found at
  once rather than at the next full scan.

Every interval prints the jobs processed per second, the backlog, the claim round
trip's p50/p99 (measured by the workers), the full scans (cursor mode), the server's CPU,
and the dead tuples of ``pgqueue.jobs``; at the end, per phase (before, held, after):
throughput, claim p50/p99, pickup p50/p99/max (enqueue to claim, by the jobs' own
timestamps) and the held/before ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.pgstats import ServerCpu, hold_horizon, quantiles, table_stats  # noqa: E402

QUEUE = "horizon"
WORKERS = 2
PRODUCERS = 4
TICK_JOBS = 10
BATCH = 100  # pgqueue.worker.core.DEFAULT_BATCH_SIZE
POLL = 1.0  # an idle worker claims again at least this often
PHASES = ("before", "held", "after")

ENQUEUE = """
INSERT INTO pgqueue.jobs (queue, task, args)
SELECT $1, 'noop', '{}'::jsonb FROM generate_series(1, $2::integer)
"""

# The cursor claim: claim_jobs with one cursor per queue ($4 priority, $5 run_at, $6 id:
# the index key of the last job this worker claimed of that queue). Per queue, two
# range scans of jobs_claim_idx in claim order, each starting where the cursor is:
# the rest of the cursor's priority (equality on queue and priority, a row comparison on
# (run_at, id)), then the lower priorities. The cursor at the head (32767, -infinity,
# min bigint) makes it a full scan. Returns what the cursor needs (priority, run_at).
CURSOR_CLAIM = """
WITH candidates AS (
    SELECT c.id, c.priority, c.run_at, c.turn
    FROM (SELECT u.name, u.priority, u.run_at, u.id
          FROM unnest($1::text[], $4::smallint[], $5::timestamptz[], $6::bigint[])
               AS u(name, priority, run_at, id)
          WHERE NOT EXISTS (SELECT FROM pgqueue.queues p WHERE p.name = u.name AND p.paused)
            AND NOT EXISTS (SELECT FROM pgqueue.queue_limits l WHERE l.queue = u.name)) AS q
    CROSS JOIN LATERAL (
        SELECT x.id, x.priority, x.run_at, row_number() OVER () AS turn
        FROM (
            SELECT * FROM (
                SELECT j.id, j.priority, j.run_at
                FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = q.name AND j.priority = q.priority
                  AND (j.run_at, j.id) > (q.run_at, q.id) AND j.run_at <= now()
                ORDER BY j.priority DESC, j.run_at, j.id
                LIMIT $2
                FOR UPDATE SKIP LOCKED) AS same
            UNION ALL
            SELECT * FROM (
                SELECT j.id, j.priority, j.run_at
                FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = q.name AND j.priority < q.priority
                  AND j.run_at <= now()
                ORDER BY j.priority DESC, j.run_at, j.id
                LIMIT $2
                FOR UPDATE SKIP LOCKED) AS lower
            LIMIT $2
        ) AS x
    ) AS c
    ORDER BY c.turn, c.priority DESC, c.run_at, c.id
    LIMIT $2
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = $3::uuid,
        progress = NULL
    WHERE j.id = ANY (ARRAY(SELECT c.id FROM candidates c))
    RETURNING j.id, j.queue, j.task, j.args::text AS args, j.priority, j.attempts AS attempt,
              j.max_attempts, EXTRACT(EPOCH FROM j.timeout)::float8 AS timeout,
              j.trace_context::text AS trace_context, j.run_at
)
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE EXISTS (SELECT FROM pgqueue.queue_limits l WHERE l.queue = ANY ($1::text[]))
"""

# complete_succeeded with the rows found by primary key. The library's statement joins the
# jobs to unnest() on id, and the planner may hash the jobs found by a scan of a partial
# index WHERE state = 'running' (jobs_running_key_idx) instead: a scan that walks every
# dead entry of a job that left running while the horizon is held (O(dead) a completion).
# ``j.id = ANY ($1)`` gives it the primary key to probe, a batch's worth, and the state
# compared as text (which implies no partial index's predicate) leaves it no other index.
COMPLETE_BY_ID = """
WITH done AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'succeeded', result = d.result::jsonb, finished_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::integer[]) AS d(id, result, attempt)
    WHERE j.id = ANY ($1::bigint[]) AND j.id = d.id AND j.state::text = 'running'
      AND j.attempts = d.attempt
    RETURNING j.id
)
SELECT pgqueue.notify_finished(array_agg(id)) FROM done HAVING count(*) > 0
"""

HEAD_KEY = (32767, datetime(1, 1, 1, tzinfo=UTC), -(2**63))


def _claim_order(priority: int, run_at: datetime, job_id: int) -> tuple[int, datetime, int]:
    return (-priority, run_at, job_id)


# --- the worker process ----------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    done: int = 0
    claims: list[float] = field(default_factory=list)  # ms, every claim round trip
    full_scans: list[float] = field(default_factory=list)  # ms, cursor mode's full scans
    completes: list[float] = field(default_factory=list)  # ms, every completion round trip
    behind: int = 0  # jobs full scans found behind the cursor

    def take(self) -> dict[str, Any]:
        out = {
            "done": self.done,
            "claims": [round(x, 3) for x in self.claims],
            "full": [round(x, 3) for x in self.full_scans],
            "completes": [round(x, 3) for x in self.completes],
            "behind": self.behind,
        }
        self.done, self.claims, self.full_scans, self.completes, self.behind = 0, [], [], [], 0
        return out


@dataclass(slots=True)
class Cursor:
    """One queue's cursor and the full-scan timer (cursor mode)."""

    t_min: float
    t_max: float
    slack: timedelta
    key: tuple[int, datetime, int] | None = None  # (priority, run_at, id) last claimed
    period: float = 0.0
    last_full: float = 0.0
    full_again: bool = True  # the first claim scans from the head

    def __post_init__(self) -> None:
        self.period = self.t_min

    def full_due(self, now: float) -> bool:
        return self.key is None or self.full_again or now - self.last_full >= self.period

    def bound(self) -> tuple[int, datetime, int]:
        if self.key is None:
            return HEAD_KEY
        priority, run_at, job_id = self.key
        if self.slack:
            return priority, run_at - self.slack, -(2**63)
        return priority, run_at, job_id

    def after_claim(self, rows: list[Any], *, full: bool, want: int, now: float) -> int:
        """Move the cursor past what was claimed; the jobs found behind it (full scans)."""
        keys = [(r["priority"], r["run_at"], r["id"]) for r in rows if r["id"] is not None]
        behind = 0
        if full:
            if self.key is not None:
                bound = _claim_order(*self.bound())
                behind = sum(1 for k in keys if _claim_order(*k) < bound)
            self.last_full = now
            self.full_again = behind > 0 and len(keys) == want
            self.period = self.t_min if behind else min(self.period * 2, self.t_max)
        for k in keys:
            if self.key is None or _claim_order(*k) > _claim_order(*self.key):
                self.key = k
        return behind


async def _worker(args: argparse.Namespace) -> None:
    dsn, mode, completion = args.dsn, args.mode, args.complete
    import asyncpg  # noqa: PLC0415

    from pgqueue.sql import query  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    wake = asyncio.Event()
    await listener.add_listener("pgqueue_enqueued", lambda *_: wake.set())
    worker_id = str(uuid.uuid4())
    head = await conn.prepare(query("claim_jobs"))
    cursor_claim = await conn.prepare(CURSOR_CLAIM)
    complete = await conn.prepare(
        query("complete_succeeded") if completion == "library" else COMPLETE_BY_ID
    )
    cursor = Cursor(args.t_min, args.t_max, timedelta(milliseconds=args.slack_ms))
    tally = Tally()
    stop = asyncio.Event()

    async def commands() -> None:
        while line := await asyncio.to_thread(sys.stdin.readline):
            if line.strip() == "tick":
                print(json.dumps(tally.take()), flush=True)
            elif line.strip() == "stop":
                break
        stop.set()
        wake.set()

    print("ready", flush=True)
    reader = asyncio.create_task(commands())
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            wake.clear()
            started = loop.time()
            if mode == "head":
                rows = await head.fetch([QUEUE], BATCH, worker_id)
                full = False
            else:
                full = cursor.full_due(started)
                p, r, i = HEAD_KEY if full else cursor.bound()
                rows = await cursor_claim.fetch([QUEUE], BATCH, worker_id, [p], [r], [i])
            elapsed = (loop.time() - started) * 1000
            tally.claims.append(elapsed)
            if full:
                tally.full_scans.append(elapsed)
            rows = [row for row in rows if row["id"] is not None]
            if mode == "cursor":
                tally.behind += cursor.after_claim(rows, full=full, want=BATCH, now=started)
            if rows:
                ids = [row["id"] for row in rows]
                completing = loop.time()
                await complete.fetch(ids, [None] * len(ids), [row["attempt"] for row in rows])
                tally.completes.append((loop.time() - completing) * 1000)
                tally.done += len(ids)
            if len(rows) < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL)
    finally:
        reader.cancel()
        await conn.close()
        await listener.close()


# --- the driver ------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    name: str
    seconds: float = 0.0
    processed: int = 0
    claims: list[float] = field(default_factory=list)
    full: list[float] = field(default_factory=list)
    completes: list[float] = field(default_factory=list)
    behind: int = 0
    cpu_seconds: float | None = 0.0
    started: datetime | None = None  # by the server's clock
    ended: datetime | None = None

    def throughput(self) -> float:
        return self.processed / self.seconds if self.seconds else float("nan")


class Producers:
    def __init__(self, dsn: str, rate: float) -> None:
        self.dsn, self.rate, self.enqueued = dsn, rate, 0

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._one(i, stop) for i in range(PRODUCERS)))

    async def _one(self, index: int, stop: asyncio.Event) -> None:
        import asyncpg  # noqa: PLC0415

        conn = await asyncpg.connect(self.dsn)
        try:
            insert = await conn.prepare(ENQUEUE)
            loop = asyncio.get_running_loop()
            interval = PRODUCERS * TICK_JOBS / self.rate
            start, n = loop.time() + index * interval / PRODUCERS, 0
            while not stop.is_set():
                if (wait := start + n * interval - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await insert.fetch(QUEUE, TICK_JOBS)
                self.enqueued += TICK_JOBS
                n += 1
        finally:
            await conn.close()


class Workers:
    def __init__(self, dsn: str, args: argparse.Namespace, mode: str, completion: str) -> None:
        command = [sys.executable, "-m", "benchmarks.horizon_cursor", "--worker", "--dsn", dsn,
                   "--mode", mode, "--complete", completion, "--t-min", str(args.t_min),
                   "--t-max", str(args.t_max), "--slack-ms", str(args.slack_ms)]  # fmt: skip
        self.procs = [
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(WORKERS)
        ]

    async def _line(self, proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None  # noqa: S101
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        if not line:
            raise RuntimeError(f"worker {proc.pid} exited ({proc.poll()})")
        return line

    def _send(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None  # noqa: S101
            proc.stdin.write(word + "\n")
            proc.stdin.flush()

    async def ready(self) -> None:
        for proc in self.procs:
            if (line := (await self._line(proc)).strip()) != "ready":
                raise RuntimeError(f"worker {proc.pid} said {line!r}")

    async def tick(self) -> dict[str, Any]:
        self._send("tick")
        merged: dict[str, Any] = {"done": 0, "claims": [], "full": [], "completes": [], "behind": 0}
        for proc in self.procs:
            report = json.loads(await self._line(proc))
            merged["done"] += report["done"]
            merged["claims"] += report["claims"]
            merged["full"] += report["full"]
            merged["completes"] += report["completes"]
            merged["behind"] += report["behind"]
        return merged

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._send("stop")
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


PICKUP = """
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP
       (ORDER BY d), max(d), count(*)
FROM (SELECT EXTRACT(EPOCH FROM started_at - created_at) * 1000 AS d
      FROM pgqueue.jobs
      WHERE created_at >= $1 AND created_at < $2 AND started_at IS NOT NULL) AS s
"""


async def run_mode(
    dsn: str, mode: str, completion: str, args: argparse.Namespace
) -> dict[str, Phase]:
    import asyncpg  # noqa: PLC0415

    extra = (
        f" (T {args.t_min:g}..{args.t_max:g} s, slack {args.slack_ms:g} ms)"
        if mode == "cursor"
        else ""
    )
    print(
        f"\n== mode {mode}{extra}, completion {completion}: {args.rate:,.0f} jobs/s offered "
        f"({TICK_JOBS} an insert), "
        f"{WORKERS} raw workers (batch {BATCH}); {args.before:.0f} s, horizon held "
        f"{args.hold:.0f} s, then {args.after:.0f} s ==",
        flush=True,
    )
    stats = await asyncpg.connect(dsn)
    await stats.execute("TRUNCATE pgqueue.jobs, pgqueue.job_counter_deltas CASCADE")
    await stats.execute("VACUUM ANALYZE pgqueue.jobs")
    cpu = await ServerCpu.of(stats)
    producers = Producers(dsn, args.rate)
    phases = {name: Phase(name) for name in PHASES}
    stop, release = asyncio.Event(), asyncio.Event()
    workers = Workers(dsn, args, mode, completion)
    holder: asyncio.Task[None] | None = None
    tasks: list[asyncio.Task[None]] = []
    print(
        f"  {'phase':<7}{'t':>5}  {'done/s':>7}  {'backlog':>8}  {'claim p50/p99 ms':>17}  "
        f"{'full n/p50 ms/behind':>21}  {'complete p50':>12}  {'pg cpu':>6}  {'dead':>9}",
        flush=True,
    )
    try:
        await workers.ready()
        workers._send("go")  # noqa: SLF001 - any line: the workers ignore it
        tasks.append(asyncio.create_task(producers.run(stop)))
        started = time.monotonic()
        done = 0
        cpu_before = cpu.seconds()
        ends = {
            "before": args.before,
            "held": args.before + args.hold,
            "after": args.before + args.hold + args.after,
        }
        for name in PHASES:
            phase = phases[name]
            if name == "held":
                holder = asyncio.create_task(hold_horizon(dsn, release))
            if name == "after":
                release.set()
            phase.started = await stats.fetchval("SELECT clock_timestamp()")
            phase_start, phase_done, phase_cpu = time.monotonic(), done, cpu_before
            tick_start = time.monotonic()
            while time.monotonic() - started < ends[name] - 0.01:
                await asyncio.sleep(min(args.interval, ends[name] - (time.monotonic() - started)))
                report = await workers.tick()
                now = time.monotonic()
                span, tick_start = now - tick_start, now
                done += report["done"]
                cpu_now = cpu.seconds()
                table = await table_stats(stats)
                p50, p99 = quantiles(report["claims"])
                phase.claims += report["claims"]
                phase.full += report["full"]
                phase.completes += report["completes"]
                phase.behind += report["behind"]
                share = (
                    "     -"
                    if cpu_now is None or cpu_before is None
                    else f"{100 * (cpu_now - cpu_before) / span:5.0f}%"
                )
                full_p50 = statistics.median(report["full"]) if report["full"] else float("nan")
                full = f"{len(report['full'])}/{full_p50:.1f}/{report['behind']}"
                complete_p50, _ = quantiles(report["completes"])
                print(
                    f"  {name:<7}{now - started:5.0f}  {report['done'] / span:7,.0f}  "
                    f"{producers.enqueued - done:8,}  {p50:8.2f}/{p99:8.2f}  {full:>21}  "
                    f"{complete_p50:12.2f}  {share:>6}  {table.dead:9,}",
                    flush=True,
                )
                cpu_before = cpu_now
            phase.seconds = time.monotonic() - phase_start
            phase.processed = done - phase_done
            phase.cpu_seconds = (
                None if cpu_before is None or phase_cpu is None else cpu_before - phase_cpu
            )
            phase.ended = await stats.fetchval("SELECT clock_timestamp()")
    finally:
        stop.set()
        release.set()
        await asyncio.gather(*tasks, *([holder] if holder else []), return_exceptions=True)
        workers.stop()
    await _summary(stats, f"{mode}/{completion}", phases)
    await stats.close()
    return phases


async def _summary(stats: Any, mode: str, phases: dict[str, Phase]) -> None:
    print(
        f"  {'phase':<7}{'seconds':>8}{'jobs/s':>8}  {'claim p50/p99 ms':>17}  "
        f"{'complete p50/p99':>17}  {'full scans':>10}"
        f"  {'behind':>6}  {'pg cpu':>6}  {'pickup p50/p99/max ms':>23}",
        flush=True,
    )
    for phase in phases.values():
        p50, p99 = quantiles(phase.claims)
        c50, c99 = quantiles(phase.completes)
        cpu = (
            "     -"
            if phase.cpu_seconds is None
            else f"{100 * phase.cpu_seconds / phase.seconds:5.0f}%"
        )
        row = await stats.fetchrow(PICKUP, phase.started, phase.ended)
        pickup = f"{row[0] or 0:,.1f}/{row[1] or 0:,.1f}/{row[2] or 0:,.0f}"
        print(
            f"  {phase.name:<7}{phase.seconds:8.0f}{phase.throughput():8,.0f}  "
            f"{p50:8.2f}/{p99:8.2f}  {c50:8.2f}/{c99:8.2f}  {len(phase.full):>10}  "
            f"{phase.behind:>6}  {cpu:>6}  {pickup:>23}",
            flush=True,
        )
    before, held = phases["before"].throughput(), phases["held"].throughput()
    ratio = held / before if before else float("nan")
    verdict = "met" if ratio >= 0.80 else "NOT met"
    print(
        f"  mode {mode}: held/before = {held:,.0f}/{before:,.0f} = {ratio:.2f} "
        f"(a loss of {1 - ratio:.0%}; goal at most 20%: {verdict})",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--mode", choices=("head", "cursor", "both"), default="both")
    parser.add_argument(
        "--complete",
        choices=("library", "by-id", "both"),
        default="library",
        help="complete_succeeded as it is, or COMPLETE_BY_ID",
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="jobs/s offered")
    parser.add_argument("--before", type=float, default=40.0, help="seconds before the hold")
    parser.add_argument("--hold", type=float, default=180.0, help="seconds the horizon is held")
    parser.add_argument("--after", type=float, default=40.0, help="seconds after the hold")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds a line")
    parser.add_argument("--t-min", type=float, default=1.0, help="full scan period, at first")
    parser.add_argument("--t-max", type=float, default=32.0, help="full scan period, at most")
    parser.add_argument("--slack-ms", type=float, default=0.0, help="cursor scan starts behind")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(args))
        return 0

    from benchmarks.database import scratch_database  # noqa: PLC0415

    started = time.perf_counter()
    modes = ("head", "cursor") if args.mode == "both" else (args.mode,)
    completions = ("library", "by-id") if args.complete == "both" else (args.complete,)
    with scratch_database(args.dsn) as (dsn, _where):

        async def run() -> None:
            for completion in completions:
                for mode in modes:
                    await run_mode(dsn, mode, completion, args)

        asyncio.run(run())
    print(f"the run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
