"""The job counters (migration 0019) against counting rows at read time, with millions of
jobs in the table: prints figures, asserts nothing about time.

    .venv/bin/python -m benchmarks.counters                      # 5,000,000 jobs
    .venv/bin/python -m benchmarks.counters --rows 1000000
    .venv/bin/python -m benchmarks.counters --dsn postgresql://postgres@127.0.0.1/postgres

In a scratch database (created, migrated and dropped; see benchmarks/database.py):

1. The write path: the same jobs enqueued, claimed and completed one statement per move
   (what a worker's smallest batches do), then enqueued in bulk and claimed and completed
   by 100, with the counting triggers on and then off, in alternating rounds
   (synchronous_commit off, so that fsyncs do not drown the figure): the microseconds
   the triggers add per job.
2. The read path: ``--rows`` jobs filled in with generate_series in statements of a
   million rows (mostly finished, as in a table that keeps a week of history; 20,000
   queued of which 2,000 scheduled for later, over three priorities), then each read
   timed (median of ``--repeat`` runs): the old count over the table (the queue_stats view,
   the metrics query and the dashboard's throughput as they were before 0019) against the
   new reads of the counters.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.database import scratch_database  # noqa: E402
from pgqueue.sql import query  # noqa: E402

TRIGGERS = ("jobs_count_inserted", "jobs_count_updated", "jobs_count_deleted")

# Before migration 0019: every read counted the rows of pgqueue.jobs.
OLD_QUEUE_STATS = """
SELECT COALESCE(s.queue, p.name) AS queue, s.queued, s.claimable, s.running, s.succeeded,
       s.failed, s.cancelled, s.oldest_claimable_age, COALESCE(p.paused, false) AS paused
FROM (
    SELECT queue,
        count(*) FILTER (WHERE state = 'queued') AS queued,
        count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS claimable,
        count(*) FILTER (WHERE state = 'running') AS running,
        count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
        count(*) FILTER (WHERE state = 'failed') AS failed,
        count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
        now() - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now())
            AS oldest_claimable_age
    FROM pgqueue.jobs
    GROUP BY queue
) AS s
FULL JOIN pgqueue.queues p ON p.name = s.queue
"""

OLD_METRICS = """
SELECT queue, task,
       CASE WHEN state IN ('succeeded', 'failed') AND started_at IS NOT NULL
                 AND finished_at IS NOT NULL
            THEN width_bucket(
                (date_part('epoch', finished_at - started_at) * 1000000)::bigint - 1,
                %(bounds)s::bigint[])
       END AS bucket,
       count(*) AS total,
       count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS claimable,
       count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       COALESCE(sum(GREATEST(attempts - 1, 0)), 0)::bigint AS retries,
       date_part('epoch', now() - min(run_at) FILTER (WHERE state = 'queued'
                                                        AND run_at <= now()))
           AS oldest_claimable_age,
       COALESCE(date_part('epoch', sum(finished_at - started_at)
                                   FILTER (WHERE state IN ('succeeded', 'failed'))), 0)
           AS duration_sum
FROM pgqueue.jobs
GROUP BY 1, 2, 3
"""

OLD_THROUGHPUT = """
SELECT queue,
       GREATEST(0, floor(EXTRACT(EPOCH FROM now() - finished_at) / 60))::integer AS minutes_ago,
       count(*) AS finished,
       count(*) FILTER (WHERE state = 'failed') AS failed
FROM pgqueue.jobs
WHERE finished_at > now() - make_interval(mins => %(minutes)s::integer)
GROUP BY 1, 2
"""

FILL = """
INSERT INTO pgqueue.jobs (queue, task, state, priority, attempts, run_at, created_at,
                          started_at, finished_at)
SELECT 'q' || (i %% 4), 'task_' || (i %% 5),
       CASE WHEN i <= %(queued)s THEN 'queued'
            WHEN i %% 50 = 0 THEN 'failed'
            ELSE 'succeeded' END::pgqueue.job_state,
       i %% 3,
       CASE WHEN i <= %(queued)s THEN 0 WHEN i %% 10 = 0 THEN 2 ELSE 1 END,
       now() + CASE WHEN i <= %(scheduled)s THEN interval '1 hour' ELSE interval '0' END,
       now() - interval '2 days',
       CASE WHEN i > %(queued)s THEN now() - make_interval(secs => 30 + (i %% 7) * 0.01) END,
       CASE WHEN i > %(queued)s THEN now() - interval '30 s' END
FROM generate_series(%(start)s::bigint, %(stop)s::bigint) AS i
"""


def timed(conn: psycopg.Connection, sql: str, params: object = None, repeat: int = 3) -> float:
    """The median wall time of ``repeat`` runs of the statement, in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        conn.execute(sql, params).fetchall()  # type: ignore[arg-type]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def set_triggers(conn: psycopg.Connection, *, on: bool) -> None:
    for name in TRIGGERS:
        conn.execute(f"ALTER TABLE pgqueue.jobs {'ENABLE' if on else 'DISABLE'} TRIGGER {name}")


def _one_at_a_time(conn: psycopg.Connection, jobs: int) -> None:
    for _ in range(jobs):
        (job_id,) = conn.execute(
            "INSERT INTO pgqueue.jobs (queue, task) VALUES ('w', 'noop') RETURNING id"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = attempts + 1, "
            "started_at = now() WHERE id = %s",
            (job_id,),
        )
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'succeeded', finished_at = now() WHERE id = %s",
            (job_id,),
        )


def _in_batches(conn: psycopg.Connection, jobs: int, batch: int = 100) -> None:
    conn.execute(
        "INSERT INTO pgqueue.jobs (queue, task, args) "
        "SELECT 'w', 'noop', '{\"n\": 1}' FROM generate_series(1, %s)",
        (jobs,),
    )
    for _ in range(jobs // batch):
        ids = [
            r[0]
            for r in conn.execute(
                "UPDATE pgqueue.jobs SET state = 'running', attempts = attempts + 1, "
                "started_at = now() WHERE id IN (SELECT id FROM pgqueue.jobs "
                "WHERE state = 'queued' AND queue = 'w' ORDER BY priority DESC, run_at, id "
                "LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
                (batch,),
            ).fetchall()
        ]
        conn.execute(
            "UPDATE pgqueue.jobs j SET state = 'succeeded', finished_at = now(), "
            "result = 'null' FROM unnest(%s::bigint[]) AS d(id) WHERE j.id = d.id",
            (ids,),
        )


def write_path(conn: psycopg.Connection, jobs: int, rounds: int) -> None:
    # Commits without waiting for the WAL flush: on a shared disk the fsync would drown
    # what the triggers cost in its noise.
    conn.execute("SET synchronous_commit = off")
    print(f"write path: {jobs:,} jobs per round, {rounds} rounds each, triggers on and off")
    kinds = {
        "one statement per move": _one_at_a_time,
        "bulk insert, claim and complete by 100": _in_batches,
    }
    for kind, move in kinds.items():
        per_job: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for on in (True, False):
                set_triggers(conn, on=on)
                start = time.perf_counter()
                move(conn, jobs)
                per_job[on].append((time.perf_counter() - start) / jobs * 1e6)
                conn.execute("DELETE FROM pgqueue.jobs WHERE queue = 'w'")
                conn.execute("VACUUM pgqueue.jobs")
        set_triggers(conn, on=True)
        with_, without = statistics.median(per_job[True]), statistics.median(per_job[False])
        print(f"  {kind}:")
        print(f"    triggers on : {with_:8.1f} us per job")
        print(f"    triggers off: {without:8.1f} us per job")
        print(f"    cost        : {with_ - without:+8.1f} us per job ({with_ / without - 1:+.0%})")
    conn.execute("SELECT pgqueue.roll_up_job_counters()")
    conn.execute("RESET synchronous_commit")


def fill(conn: psycopg.Connection, rows: int) -> None:
    queued, scheduled, step = 20_000, 2_000, 1_000_000
    print(f"filling {rows:,} jobs ({queued:,} queued, {scheduled:,} of them scheduled)")
    start = time.perf_counter()
    if not rows:
        return
    for first in range(1, rows + 1, step):
        last = min(rows, first + step - 1)
        params = {"queued": queued, "scheduled": scheduled, "start": first, "stop": last}
        t = time.perf_counter()
        conn.execute(FILL, params)
        print(f"  rows {first:>10,} - {last:>10,}: {time.perf_counter() - t:6.1f} s")
    (deltas,) = conn.execute("SELECT count(*) FROM pgqueue.job_counter_deltas").fetchone()  # type: ignore[misc]
    print(f"  delta rows the triggers wrote for those statements: {deltas:,}")
    t = time.perf_counter()
    (moved,) = conn.execute("SELECT pgqueue.roll_up_job_counters()").fetchone()  # type: ignore[misc]
    print(f"  rollup of {moved:,} delta rows: {(time.perf_counter() - t) * 1000:.1f} ms")
    t = time.perf_counter()
    conn.execute("VACUUM ANALYZE pgqueue.jobs")
    took, total = time.perf_counter() - t, time.perf_counter() - start
    print(f"  VACUUM ANALYZE: {took:.1f} s; fill total {total:.0f} s")
    size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('pgqueue.jobs'))").fetchone()
    print(f"  pgqueue.jobs with its indexes: {size[0]}")  # type: ignore[index]


def read_path(conn: psycopg.Connection, repeat: int) -> None:
    (seconds,) = conn.execute(query("job_duration_bounds")).fetchone()  # type: ignore[misc]
    bounds = [round(b * 1_000_000) for b in seconds]
    minutes = query("dashboard_throughput").replace("$1::", "%(minutes)s::")
    reads = [
        ("queue_stats", OLD_QUEUE_STATS, "SELECT * FROM pgqueue.queue_stats", {}),
        ("metrics (jobs)", OLD_METRICS, query("metrics_jobs"), {"bounds": bounds}),
        ("dashboard throughput", OLD_THROUGHPUT, minutes, {"minutes": 15}),
    ]
    print(f"reads (median of {repeat}, ms):")
    print(f"  {'read':<22}{'old: count rows':>16}{'new: counters':>16}{'ratio':>10}")
    for name, old_sql, new_sql, params in reads:
        old = timed(conn, old_sql, params, repeat)
        new = timed(conn, new_sql, params if "%(" in new_sql else None, repeat)
        print(f"  {name:<22}{old:16.1f}{new:16.2f}{old / new:9.0f}x")
    # With deltas pending (no rollup for a while): what a reader pays for them.
    conn.execute(
        "INSERT INTO pgqueue.job_counter_deltas (queue, task, metric, n) "
        "SELECT 'q' || (i % 4), 'task_' || (i % 5), 'enqueued_total', 1 "
        "FROM generate_series(1, 100000) AS i"
    )
    new = timed(conn, query("metrics_jobs"), None, repeat)
    stats = timed(conn, "SELECT * FROM pgqueue.queue_stats", None, repeat)
    print(f"  with 100,000 delta rows pending: metrics {new:.1f} ms, queue_stats {stats:.1f} ms")
    conn.execute("SELECT pgqueue.roll_up_job_counters()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="the server for the scratch database (default: embedded)")
    parser.add_argument("--rows", type=int, default=5_000_000, help="jobs to fill in")
    parser.add_argument("--repeat", type=int, default=3, help="runs per read timed")
    parser.add_argument("--write-jobs", type=int, default=2_000, help="jobs per write round")
    parser.add_argument("--write-rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch_database(args.dsn) as (dsn, where):
        print(f"database: {where}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            if args.write_jobs:
                write_path(conn, args.write_jobs, args.write_rounds)
            fill(conn, args.rows)
            read_path(conn, args.repeat)


if __name__ == "__main__":
    main()
