-- Job counters (migration 0019; see the section "Job counters" of schema.sql): the
-- totals kept as jobs move, read with the deltas not yet rolled up, in one statement
-- (one snapshot): exact at any instant. None of these reads pgqueue.jobs.

-- name: metrics_jobs
-- The counters of GET /metrics, per queue, task and metric (only ever growing:
-- enqueued_total, succeeded_total, failed_total, cancelled_total, retried_total,
-- duration_bucket_K, duration_us_sum; see the service's metrics.py for their meaning).
-- Cost: O(queues x tasks x metrics + deltas pending since the last rollup).
SELECT c.queue, c.task, c.metric, sum(c.n)::bigint AS n
FROM (SELECT t.queue, t.task, t.metric, t.n FROM pgqueue.job_counters t
      UNION ALL
      SELECT d.queue, d.task, d.metric, d.n FROM pgqueue.job_counter_deltas d
      WHERE d.minute IS NULL) AS c
WHERE c.metric NOT IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'blocked')
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

-- name: job_duration_bounds
-- The histogram's bucket bounds in seconds, ascending (fixed by the schema).
SELECT pgqueue.job_duration_bounds() AS bounds;

-- name: dashboard_throughput
-- Jobs that finished (succeeded, failed or cancelled) in each of the last $1 clock
-- minutes, per queue: minute 0 is the current minute (so far), 1 the one before, and so
-- on, with how many of them failed; at most the last 60 minutes are kept. From the
-- per-minute counters: O(queues x minutes + pending deltas), whatever the size of
-- pgqueue.jobs.
SELECT c.queue,
       (date_part('epoch', date_trunc('minute', now()) - c.minute) / 60)::integer AS minutes_ago,
       sum(c.n) FILTER (WHERE c.metric = 'finished')::bigint AS finished,
       COALESCE(sum(c.n) FILTER (WHERE c.metric = 'failed'), 0)::bigint AS failed
FROM (SELECT m.queue, m.minute, m.metric, m.n FROM pgqueue.job_counter_minutes m
      UNION ALL
      SELECT d.queue, d.minute, d.metric, d.n FROM pgqueue.job_counter_deltas d
      WHERE d.minute IS NOT NULL) AS c
WHERE c.minute > date_trunc('minute', now()) - make_interval(mins => $1::integer)
GROUP BY 1, 2
HAVING sum(c.n) FILTER (WHERE c.metric = 'finished') > 0
ORDER BY 1, 2;

-- name: roll_up_job_counters
-- Fold the pending deltas into the totals; how many delta rows moved.
SELECT pgqueue.roll_up_job_counters();

-- name: roll_up_job_counters_elected
-- The same, by one worker at a time: the one whose statement gets this advisory lock
-- (lock and rollup are one statement, so the lock lasts no longer than the rollup).
-- NULL when another worker holds it.
SELECT CASE WHEN pg_try_advisory_xact_lock($1::bigint) THEN  -- pgqueue.locks.COUNTERS
    pgqueue.roll_up_job_counters()
END;
