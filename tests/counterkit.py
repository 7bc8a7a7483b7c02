"""The job counters checked against the rows they count (migration 0019): a recount of
pgqueue.jobs with the old O(jobs) queries, for the counter tests and for the fault
suite's invariants (after SIGKILLed workers, server crashes and outages the counters
still match the rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgqueue.service import metrics as metrics_module

if TYPE_CHECKING:
    import psycopg

GAUGES = ("queued", "running", "succeeded", "failed", "cancelled", "blocked")

# What the counters must say, recounted from the rows with the old, O(jobs) queries: true
# for as long as no row has left the table and no job was retried by hand. Bucket bounds
# come from metrics.py (DURATION_BUCKETS), independently of pgqueue.job_duration_bucket.
RECOUNT = """
SELECT queue, task, metric, n::bigint FROM (
    SELECT queue, task, state::text AS metric, count(*) AS n FROM pgqueue.jobs GROUP BY 1, 2, 3
    UNION ALL
    SELECT queue, task, 'enqueued_total', count(*) FROM pgqueue.jobs GROUP BY 1, 2
    UNION ALL
    SELECT queue, task, state::text || '_total', count(*) FROM pgqueue.jobs
    WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2, 3
    UNION ALL
    SELECT queue, task, 'retried_total',
           sum(GREATEST(attempts - 1 - (state = 'running')::integer, 0))
    FROM pgqueue.jobs GROUP BY 1, 2
    UNION ALL
    SELECT queue, task, 'duration_bucket_' || width_bucket(us - 1, %(bounds)s::bigint[]),
           count(*)
    FROM (SELECT queue, task,
                 (date_part('epoch', finished_at - started_at) * 1000000)::bigint AS us
          FROM pgqueue.jobs
          WHERE state IN ('succeeded', 'failed') AND started_at IS NOT NULL
            AND finished_at IS NOT NULL) AS f
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT queue, task, 'duration_us_sum',
           sum((date_part('epoch', finished_at - started_at) * 1000000)::bigint)
    FROM pgqueue.jobs
    WHERE state IN ('succeeded', 'failed') AND started_at IS NOT NULL
      AND finished_at IS NOT NULL
    GROUP BY 1, 2
) AS r
WHERE n <> 0
"""

COUNTED = """
SELECT queue, task, metric, sum(n)::bigint FROM (
    SELECT queue, task, metric, n FROM pgqueue.job_counters
    UNION ALL
    SELECT queue, task, metric, n FROM pgqueue.job_counter_deltas WHERE minute IS NULL
) AS c
GROUP BY 1, 2, 3
HAVING sum(n) <> 0
"""

BOUNDS_US = [round(b * 1_000_000) for b in metrics_module.DURATION_BUCKETS]


def recount(conn: psycopg.Connection) -> dict[tuple[str, str, str], int]:
    rows = conn.execute(RECOUNT, {"bounds": BOUNDS_US}).fetchall()
    return {(q, t, m): n for q, t, m, n in rows}


def counted(conn: psycopg.Connection) -> dict[tuple[str, str, str], int]:
    return {(q, t, m): n for q, t, m, n in conn.execute(COUNTED).fetchall()}


# The rescue's own counter, recounted: one pgqueue.WorkerLost entry in a job's errors
# per attempt the rescue took back.
RESCUES = """
SELECT queue, task, 'rescued_total', count(*)
FROM pgqueue.jobs, jsonb_array_elements(errors) AS e
WHERE e->>'type' = 'pgqueue.WorkerLost'
GROUP BY 1, 2
"""


def assert_counters_match_rows(conn: psycopg.Connection) -> None:
    """Every counter and gauge equals a recount of the rows, the rescues included: true
    for as long as no job has left the table and none was retried by hand."""
    expected = recount(conn)
    expected.update({(q, t, m): n for q, t, m, n in conn.execute(RESCUES).fetchall()})
    figures = counted(conn)
    wrong = {
        key: (figures.get(key, 0), expected.get(key, 0))
        for key in figures.keys() | expected.keys()
        if figures.get(key, 0) != expected.get(key, 0)
    }
    assert not wrong, f"counters (counted, recounted) that disagree with the rows: {wrong}"
