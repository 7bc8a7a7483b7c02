"""Job counters: what GET /metrics, pgqueue.queue_stats and the dashboard say about jobs,
kept as jobs move, so that reading it costs O(queues x tasks), never a scan of
pgqueue.jobs (see the section "Job counters" of pgqueue/sql/schema.sql).

Statement-level triggers on pgqueue.jobs write each statement's changes, aggregated, to
the insert-only pgqueue.job_counter_deltas; pgqueue.roll_up_job_counters() (a worker's
counter_rollup service) folds them into pgqueue.job_counters and
pgqueue.job_counter_minutes. pgqueue.queue_stats is redefined on them (same columns,
same meaning).

The upgrade holds pgqueue.jobs against writes (CREATE TRIGGER's lock, kept until the
migration commits), then backfills from the rows in the table, in one scan: the gauges
(jobs per queue, task and state) are exact, and the counters start from what rows
remain: history before this migration is what pruning left of it (a pruned job counts
nowhere). Finished jobs of the last hour seed the dashboard's throughput.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# As in schema.sql, section "Job counters (migration 0019)".
UPGRADE = r"""
-- What GET /metrics, pgqueue.queue_stats and the dashboard say about jobs is kept as
-- jobs move, so that reading it costs O(queues x tasks), never a scan of pgqueue.jobs:
--
-- * Statement-level AFTER triggers on pgqueue.jobs (transition tables) add, per
--   statement, a few aggregated rows to pgqueue.job_counter_deltas: insert-only, so no
--   row is updated by every claim or completion and workers never queue on a counter.
-- * pgqueue.roll_up_job_counters() (a worker's "counter_rollup" service, about every
--   second, one worker at a time) moves the deltas into pgqueue.job_counters (and the
--   per-minute throughput into pgqueue.job_counter_minutes).
-- * Readers sum the totals and the pending deltas in one statement, hence one snapshot:
--   exact at any instant, and after a crash (it is all transactional).
--
-- Metrics (job_counters.metric), per queue and task:
--   gauges: 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'blocked': jobs in
--     that state now (+1/-1 as jobs move, -1 when a row is deleted);
--   counters, which only ever grow (a delete, a prune, a retry by hand never lower them):
--     'enqueued_total' (rows inserted), 'succeeded_total', 'failed_total',
--     'cancelled_total' (moves into that state), 'retried_total' (attempts beyond each
--     job's first that ended: counted when the attempt ends, never for one given back
--     by a snooze or a shutdown), 'duration_bucket_K' and 'duration_us_sum' (the run
--     time, started_at to finished_at, of each move into succeeded or failed: see
--     pgqueue.job_duration_bucket).
-- job_counter_minutes: per queue and clock minute, 'finished' (moves into succeeded,
-- failed or cancelled) and 'failed', kept for an hour (the dashboard's throughput).

-- The upper bounds, in seconds, of the job duration histogram: fixed here, once (the
-- service's metrics.py reads the same values, pinned by tests/test_counters.py).
CREATE FUNCTION pgqueue.job_duration_bounds() RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                 300, 600, 1800, 3600]::float8[]
$$;

-- The histogram bucket of a run time in microseconds: how many bounds lie below it, so
-- bucket k holds run times with bounds[k] < t <= bounds[k+1] (1-based bounds; the last
-- bucket, cardinality(bounds), is above them all). Whole microseconds keep edges exact.
CREATE FUNCTION pgqueue.job_duration_bucket(us bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT width_bucket(us - 1, ARRAY[5000, 10000, 25000, 50000, 100000, 250000, 500000,
        1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000,
        600000000, 1800000000, 3600000000]::bigint[])
$$;

-- Pending changes, one row per statement, queue, task and metric (minute: NULL, or the
-- clock minute of a per-minute throughput row). Insert-only between rollups; readers
-- and the rollup read it whole, so it stays small (vacuumed often).
CREATE TABLE pgqueue.job_counter_deltas (
    queue  text NOT NULL,
    task   text NOT NULL,
    metric text NOT NULL,
    minute timestamptz,
    n      bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000);

-- The totals the rollup folded in: one row per queue, task and metric.
CREATE TABLE pgqueue.job_counters (
    queue  text NOT NULL,
    task   text NOT NULL,
    metric text NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (queue, task, metric)
);

-- Jobs finished per queue and clock minute (metric 'finished' or 'failed'), the last
-- hour of them.
CREATE TABLE pgqueue.job_counter_minutes (
    queue  text NOT NULL,
    minute timestamptz NOT NULL,
    metric text NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (queue, minute, metric)
);

-- The counter changes of jobs jobs moving alike from (o_*) to (n_*): o_state NULL for
-- an insert. The triggers group the rows of a statement first (by where they come from,
-- where they go, duration bucket and minute), then turn each group into metrics here:
-- the per-job work is one hash aggregate, not a row per metric.
CREATE FUNCTION pgqueue.job_counter_moves(
    o_queue text, o_task text, o_state pgqueue.job_state,
    n_queue text, n_task text, n_state pgqueue.job_state,
    jobs bigint, retried bigint, bucket integer, us bigint, at timestamptz
) RETURNS TABLE (queue text, task text, metric text, minute timestamptz, n bigint)
LANGUAGE sql IMMUTABLE AS $$
    SELECT m.queue, m.task, m.metric, m.minute, m.n
    FROM (SELECT
            (o_state IS NULL
             OR (o_queue, o_task, o_state) IS DISTINCT FROM (n_queue, n_task, n_state)) AS moved,
            (n_state IN ('succeeded', 'failed', 'cancelled')
             AND o_state IS DISTINCT FROM n_state) AS ends) AS f
    CROSS JOIN LATERAL (VALUES
        (o_queue, o_task, o_state::text, NULL::timestamptz, CASE WHEN f.moved THEN -jobs END),
        (n_queue, n_task, n_state::text, NULL, CASE WHEN f.moved THEN jobs END),
        (n_queue, n_task, 'enqueued_total', NULL, CASE WHEN o_state IS NULL THEN jobs END),
        (n_queue, n_task, n_state::text || '_total', NULL, CASE WHEN f.ends THEN jobs END),
        (n_queue, n_task, 'retried_total', NULL, retried),
        (n_queue, n_task, 'duration_bucket_' || bucket, NULL,
         CASE WHEN bucket IS NOT NULL THEN jobs END),
        (n_queue, n_task, 'duration_us_sum', NULL, us),
        (n_queue, n_task, 'finished', at, CASE WHEN f.ends THEN jobs END),
        (n_queue, n_task, 'failed', at, CASE WHEN f.ends AND n_state = 'failed' THEN jobs END)
    ) AS m(queue, task, metric, minute, n)
    WHERE m.n <> 0 AND m.queue IS NOT NULL
$$;

-- Per inserted row: its past attempts beyond the first that ended (all but a running
-- row's last), and for a row inserted succeeded or failed its run time (bucket, sum)
-- and finishing minute: as if it had moved there.
CREATE FUNCTION pgqueue.count_inserted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.job_counter_deltas (queue, task, metric, minute, n)
    SELECT m.queue, m.task, m.metric, m.minute, sum(m.n)::bigint
    FROM (SELECT j.queue, j.task, j.state, count(*) AS jobs,
                 sum(GREATEST(j.attempts - 1 - (j.state = 'running')::integer, 0))::bigint
                     AS retried,
                 pgqueue.job_duration_bucket(j.us) AS bucket, sum(j.us)::bigint AS us, j.at
          FROM (SELECT n.queue, n.task, n.state, n.attempts,
                       CASE WHEN n.state IN ('succeeded', 'failed')
                            THEN (date_part('epoch', n.finished_at - n.started_at)
                                  * 1000000)::bigint END AS us,
                       CASE WHEN n.state IN ('succeeded', 'failed', 'cancelled')
                            THEN date_trunc('minute', COALESCE(n.finished_at, now())) END AS at
                FROM new_jobs n) AS j
          GROUP BY j.queue, j.task, j.state, 6, j.at) AS g
    CROSS JOIN LATERAL pgqueue.job_counter_moves(NULL, NULL, NULL, g.queue, g.task, g.state,
        g.jobs, g.retried, g.bucket, g.us, g.at) AS m
    GROUP BY 1, 2, 3, 4;
    RETURN NULL;
END
$$;

-- Per row that changed queue, task or state: a move out of running that did not give its
-- attempt back (a snooze or a release lowers attempts) ends a retry when it was beyond
-- the first; a move into succeeded or failed has a run time; into any end, a minute.
CREATE FUNCTION pgqueue.count_updated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.job_counter_deltas (queue, task, metric, minute, n)
    SELECT m.queue, m.task, m.metric, m.minute, sum(m.n)::bigint
    FROM (SELECT j.o_queue, j.o_task, j.o_state, j.queue, j.task, j.state, count(*) AS jobs,
                 sum(j.retried)::bigint AS retried,
                 pgqueue.job_duration_bucket(j.us) AS bucket, sum(j.us)::bigint AS us, j.at
          FROM (SELECT o.queue AS o_queue, o.task AS o_task, o.state AS o_state,
                       n.queue, n.task, n.state,
                       CASE WHEN o.state = 'running' AND n.state <> 'running'
                                 AND n.attempts >= o.attempts AND o.attempts > 1
                            THEN 1 ELSE 0 END AS retried,
                       CASE WHEN n.state IN ('succeeded', 'failed') AND o.state <> n.state
                            THEN (date_part('epoch', n.finished_at - n.started_at)
                                  * 1000000)::bigint END AS us,
                       CASE WHEN n.state IN ('succeeded', 'failed', 'cancelled')
                                 AND o.state <> n.state
                            THEN date_trunc('minute', COALESCE(n.finished_at, now())) END AS at
                FROM old_jobs o
                JOIN new_jobs n ON n.id = o.id
                WHERE (o.queue, o.task, o.state) IS DISTINCT FROM (n.queue, n.task, n.state)
               ) AS j
          GROUP BY j.o_queue, j.o_task, j.o_state, j.queue, j.task, j.state, 9, j.at) AS g
    CROSS JOIN LATERAL pgqueue.job_counter_moves(g.o_queue, g.o_task, g.o_state, g.queue,
        g.task, g.state, g.jobs, g.retried, g.bucket, g.us, g.at) AS m
    GROUP BY 1, 2, 3, 4
    HAVING sum(m.n) <> 0;
    RETURN NULL;
END
$$;

CREATE FUNCTION pgqueue.count_deleted_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.job_counter_deltas (queue, task, metric, minute, n)
    SELECT o.queue, o.task, o.state::text, NULL, -count(*)
    FROM old_jobs o
    GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;

-- TRUNCATE has no transition table: every gauge goes back to zero (the counters stay).
-- The statement holds an ACCESS EXCLUSIVE lock on pgqueue.jobs, so no job moves
-- meanwhile; a rollup running beside it moves deltas into totals, which leaves their sum
-- as it is.
CREATE FUNCTION pgqueue.count_truncated_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.job_counter_deltas (queue, task, metric, minute, n)
    SELECT c.queue, c.task, c.metric, NULL, -sum(c.n)::bigint
    FROM (SELECT t.queue, t.task, t.metric, t.n FROM pgqueue.job_counters t
          UNION ALL
          SELECT d.queue, d.task, d.metric, d.n FROM pgqueue.job_counter_deltas d
          WHERE d.minute IS NULL) AS c
    WHERE c.metric IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'blocked')
    GROUP BY 1, 2, 3
    HAVING sum(c.n) <> 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_inserted
    AFTER INSERT ON pgqueue.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.count_inserted_jobs();

CREATE TRIGGER jobs_count_updated
    AFTER UPDATE ON pgqueue.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.count_updated_jobs();

CREATE TRIGGER jobs_count_deleted
    AFTER DELETE ON pgqueue.jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.count_deleted_jobs();

CREATE TRIGGER jobs_count_truncated
    AFTER TRUNCATE ON pgqueue.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.count_truncated_jobs();

-- Fold the pending deltas into the totals; returns how many delta rows moved. Safe when
-- two run at once: a delta row is deleted by one of them only (the other's DELETE waits
-- for its lock, then skips it), and the upserts add under the totals' row locks (taken
-- in key order). Throughput minutes older than an hour go.
CREATE FUNCTION pgqueue.roll_up_job_counters() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    WITH gone AS (
        DELETE FROM pgqueue.job_counter_deltas
        RETURNING queue, task, metric, minute, n
    ), totals AS (
        INSERT INTO pgqueue.job_counters AS c (queue, task, metric, n)
        SELECT g.queue, g.task, g.metric, sum(g.n)::bigint
        FROM gone g WHERE g.minute IS NULL
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (queue, task, metric) DO UPDATE SET n = c.n + excluded.n
    ), minutes AS (
        INSERT INTO pgqueue.job_counter_minutes AS c (queue, minute, metric, n)
        SELECT g.queue, g.minute, g.metric, sum(g.n)::bigint
        FROM gone g WHERE g.minute >= now() - interval '1 hour'
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (queue, minute, metric) DO UPDATE SET n = c.n + excluded.n
    )
    SELECT count(*) INTO moved FROM gone;
    DELETE FROM pgqueue.job_counter_minutes WHERE minute < now() - interval '1 hour';
    RETURN moved;
END
$$;

-- Per queue: jobs in each state (the gauges), how many of the queued ones could run now,
-- the age of the oldest of those, and whether the queue is paused (a paused queue with
-- no jobs is listed too). Cost: the gauges are O(queues x tasks + pending deltas); the
-- split of queued jobs into claimable and scheduled (which time, not an event, moves)
-- reads jobs_claim_idx only: per queue with queued jobs, a loose index scan over its
-- priorities, then per priority one index probe for the oldest due job and a count of
-- the jobs scheduled for later (claimable = queued - scheduled): O(queues x priorities
-- x log(jobs) + scheduled jobs), never the finished jobs that fill the table.
CREATE OR REPLACE VIEW pgqueue.queue_stats AS
WITH gauges AS (
    SELECT c.queue,
           COALESCE(sum(c.n) FILTER (WHERE c.metric = 'queued'), 0)::bigint AS queued,
           COALESCE(sum(c.n) FILTER (WHERE c.metric = 'running'), 0)::bigint AS running,
           COALESCE(sum(c.n) FILTER (WHERE c.metric = 'succeeded'), 0)::bigint AS succeeded,
           COALESCE(sum(c.n) FILTER (WHERE c.metric = 'failed'), 0)::bigint AS failed,
           COALESCE(sum(c.n) FILTER (WHERE c.metric = 'cancelled'), 0)::bigint AS cancelled
    FROM (SELECT t.queue, t.metric, t.n FROM pgqueue.job_counters t
          UNION ALL
          SELECT d.queue, d.metric, d.n FROM pgqueue.job_counter_deltas d
          WHERE d.minute IS NULL) AS c
    WHERE c.metric IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'blocked')
    GROUP BY c.queue
    HAVING sum(c.n) <> 0
), due AS (
    SELECT g.queue, COALESCE(sum(p.scheduled), 0)::bigint AS scheduled, min(p.oldest) AS oldest
    FROM gauges g
    CROSS JOIN LATERAL (
        WITH RECURSIVE priorities(priority) AS (
            (SELECT j.priority FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = g.queue
             ORDER BY j.priority DESC LIMIT 1)
            UNION ALL
            SELECT (SELECT j.priority FROM pgqueue.jobs j
                    WHERE j.state = 'queued' AND j.queue = g.queue AND j.priority < r.priority
                    ORDER BY j.priority DESC LIMIT 1)
            FROM priorities r WHERE r.priority IS NOT NULL
        )
        SELECT (SELECT count(*) FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = g.queue AND j.priority = r.priority
                  AND j.run_at > now()) AS scheduled,
               (SELECT j.run_at FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = g.queue AND j.priority = r.priority
                  AND j.run_at <= now()
                ORDER BY j.run_at LIMIT 1) AS oldest
        FROM priorities r WHERE r.priority IS NOT NULL
    ) AS p
    WHERE g.queued > 0
    GROUP BY g.queue
)
SELECT
    COALESCE(g.queue, q.name) AS queue,
    COALESCE(g.queued, 0) AS queued,
    COALESCE(g.queued - d.scheduled, 0) AS claimable,
    COALESCE(g.running, 0) AS running,
    COALESCE(g.succeeded, 0) AS succeeded,
    COALESCE(g.failed, 0) AS failed,
    COALESCE(g.cancelled, 0) AS cancelled,
    now() - d.oldest AS oldest_claimable_age,
    COALESCE(q.paused, false) AS paused
FROM gauges g
LEFT JOIN due d ON d.queue = g.queue
FULL JOIN pgqueue.queues q ON q.name = g.queue;
"""

# Each row counted as if it had just been inserted as it stands: the insert trigger's
# statement (pgqueue.count_inserted_jobs) over the whole table.
BACKFILL = r"""
CREATE TEMPORARY TABLE job_counter_backfill ON COMMIT DROP AS
SELECT m.queue, m.task, m.metric, m.minute, sum(m.n)::bigint AS n
FROM (SELECT j.queue, j.task, j.state, count(*) AS jobs,
             sum(GREATEST(j.attempts - 1 - (j.state = 'running')::integer, 0))::bigint
                 AS retried,
             pgqueue.job_duration_bucket(j.us) AS bucket, sum(j.us)::bigint AS us, j.at
      FROM (SELECT n.queue, n.task, n.state, n.attempts,
                   CASE WHEN n.state IN ('succeeded', 'failed')
                        THEN (date_part('epoch', n.finished_at - n.started_at)
                              * 1000000)::bigint END AS us,
                   CASE WHEN n.state IN ('succeeded', 'failed', 'cancelled')
                        THEN date_trunc('minute', COALESCE(n.finished_at, now())) END AS at
            FROM pgqueue.jobs n) AS j
      GROUP BY j.queue, j.task, j.state, 6, j.at) AS g
CROSS JOIN LATERAL pgqueue.job_counter_moves(NULL, NULL, NULL, g.queue, g.task, g.state,
    g.jobs, g.retried, g.bucket, g.us, g.at) AS m
GROUP BY 1, 2, 3, 4;

INSERT INTO pgqueue.job_counters (queue, task, metric, n)
SELECT queue, task, metric, sum(n)::bigint FROM job_counter_backfill
WHERE minute IS NULL GROUP BY 1, 2, 3;

INSERT INTO pgqueue.job_counter_minutes (queue, minute, metric, n)
SELECT queue, minute, metric, sum(n)::bigint FROM job_counter_backfill
WHERE minute >= now() - interval '1 hour' GROUP BY 1, 2, 3;
"""

# The view as migration 0005 left it: a count over pgqueue.jobs.
OLD_VIEW = r"""
CREATE OR REPLACE VIEW pgqueue.queue_stats AS
SELECT
    COALESCE(s.queue, p.name) AS queue,
    COALESCE(s.queued, 0) AS queued,
    COALESCE(s.claimable, 0) AS claimable,
    COALESCE(s.running, 0) AS running,
    COALESCE(s.succeeded, 0) AS succeeded,
    COALESCE(s.failed, 0) AS failed,
    COALESCE(s.cancelled, 0) AS cancelled,
    s.oldest_claimable_age,
    COALESCE(p.paused, false) AS paused
FROM (
    SELECT
        queue,
        count(*) FILTER (WHERE state = 'queued') AS queued,
        count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS claimable,
        count(*) FILTER (WHERE state = 'running') AS running,
        count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
        count(*) FILTER (WHERE state = 'failed') AS failed,
        count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
        now() - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()) AS oldest_claimable_age
    FROM pgqueue.jobs
    GROUP BY queue
) AS s
FULL JOIN pgqueue.queues p ON p.name = s.queue;
"""

DOWNGRADE = """
DROP TRIGGER jobs_count_inserted ON pgqueue.jobs;
DROP TRIGGER jobs_count_updated ON pgqueue.jobs;
DROP TRIGGER jobs_count_deleted ON pgqueue.jobs;
DROP TRIGGER jobs_count_truncated ON pgqueue.jobs;
DROP FUNCTION pgqueue.count_inserted_jobs();
DROP FUNCTION pgqueue.count_updated_jobs();
DROP FUNCTION pgqueue.count_deleted_jobs();
DROP FUNCTION pgqueue.count_truncated_jobs();
DROP FUNCTION pgqueue.roll_up_job_counters();
DROP FUNCTION pgqueue.job_counter_moves(text, text, pgqueue.job_state, text, text,
    pgqueue.job_state, bigint, bigint, integer, bigint, timestamptz);
DROP TABLE pgqueue.job_counter_minutes;
DROP TABLE pgqueue.job_counters;
DROP TABLE pgqueue.job_counter_deltas;
DROP FUNCTION pgqueue.job_duration_bucket(bigint);
DROP FUNCTION pgqueue.job_duration_bounds();
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(BACKFILL)


def downgrade() -> None:
    op.execute(OLD_VIEW)
    op.execute(DOWNGRADE)
