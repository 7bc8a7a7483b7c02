"""The limited claim looks its chosen jobs up by primary key: ``pgqueue.claim_limited``'s
final UPDATE compares ``state::text``, so that a plan made before the table had
statistics can no longer scan the whole partial claim index instead (6-25 ms a claim
against about 1.7 ms, measured by benchmarks/flow.py on a fresh database).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# As in schema.sql (a function's text is dumped as written: it must match character for
# character).
CLAIM_LIMITED = r"""
CREATE OR REPLACE FUNCTION pgqueue.claim_limited(queue_name text, want integer, worker uuid)
RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    lim pgqueue.queue_limits;
    -- The claim's time: after the lock was granted, so later than every start logged.
    t timestamptz := clock_timestamp();
    free integer := want;
    running integer := 0;
    oldest interval;
    walk_max integer;
    ids bigint[];
    rated_keys text[];
    last_served text;
    last_seen text;
    n integer;
BEGIN
    SELECT * INTO lim FROM pgqueue.queue_limits WHERE queue = queue_name;
    IF NOT FOUND THEN
        RETURN;  -- limits cleared since the caller looked: the next claim treats it as plain
    END IF;
    IF lim.concurrency IS NOT NULL OR lim.key_concurrency IS NOT NULL
       OR EXISTS (SELECT FROM pgqueue.key_limits k WHERE k.queue = queue_name) THEN
        SELECT count(*) INTO running FROM pgqueue.jobs
        WHERE state = 'running' AND queue = queue_name;
    END IF;
    IF lim.concurrency IS NOT NULL THEN
        free := LEAST(free, lim.concurrency - running);
    END IF;
    oldest := GREATEST(lim.rate_period, lim.key_rate_period,
        (SELECT max(k.rate_period) FROM pgqueue.key_limits k WHERE k.queue = queue_name));
    IF oldest IS NOT NULL THEN
        DELETE FROM pgqueue.job_starts s WHERE s.queue = queue_name AND s.started_at <= t - oldest;
    END IF;
    IF lim.rate_count IS NOT NULL THEN
        free := LEAST(free, lim.rate_count - (
            SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
            WHERE s.queue = queue_name AND s.concurrency_key = '' AND s.started_at > t - lim.rate_period));
    END IF;
    IF free <= 0 THEN
        RETURN;
    END IF;
    -- How many keys to look at: every key that is full has a running job or a start in
    -- its window, so this many always reach `free` keys with room when there are any.
    -- A walk cut short resumes where it stopped at the next claim (key_cursor).
    walk_max := free + running + 100;

    -- Choose and lock the jobs (the claim proper follows, by id).
    WITH RECURSIVE walk(k, pos, first) AS (
        -- The loose index scan: each step is the key after the last one among the
        -- queue's queued jobs, wrapping round to the first (two descents of
        -- jobs_key_claim_idx at most), until `walk_max` keys or back at the first.
        SELECT n.k, 1, n.k
        FROM (SELECT COALESCE(
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key > lim.key_cursor),
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name)) AS k) AS n
        WHERE n.k IS NOT NULL
        UNION ALL
        SELECT n.k, w.pos + 1, w.first
        FROM walk w
        CROSS JOIN LATERAL (SELECT COALESCE(
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key > w.k),
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name)) AS k) AS n
        WHERE w.pos < walk_max AND n.k <> w.first
    ), room AS (
        SELECT w.k, w.pos, LEAST(free,
            CASE WHEN COALESCE(kl.concurrency, lim.key_concurrency) IS NOT NULL THEN
                COALESCE(kl.concurrency, lim.key_concurrency) - (
                    SELECT count(*) FROM pgqueue.jobs r
                    WHERE r.state = 'running' AND r.queue = queue_name AND r.concurrency_key = w.k)::integer
            END,
            CASE WHEN COALESCE(kl.rate_count, lim.key_rate_count) IS NOT NULL THEN
                COALESCE(kl.rate_count, lim.key_rate_count) - (
                    SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
                    WHERE s.queue = queue_name AND s.concurrency_key = w.k
                      AND s.started_at > t - COALESCE(kl.rate_period, lim.key_rate_period))::integer
            END) AS room,
            COALESCE(kl.rate_count, lim.key_rate_count) IS NOT NULL AS rated
        FROM walk w
        LEFT JOIN pgqueue.key_limits kl ON kl.queue = queue_name AND kl.concurrency_key = w.k
    ), keyed AS (
        SELECT c.id, c.priority, c.turn, r.pos, r.k, r.rated
        FROM room r
        CROSS JOIN LATERAL (
            SELECT x.id, x.priority, row_number() OVER () AS turn
            FROM (
                SELECT j.id, j.priority
                FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key = r.k
                  AND j.run_at <= t
                -- The key first: the order of jobs_key_claim_idx, which then serves it
                -- rather than a scan of the queue's claim order past other keys' jobs.
                ORDER BY j.concurrency_key, j.priority DESC, j.run_at, j.id
                LIMIT r.room
                FOR UPDATE SKIP LOCKED
            ) AS x
        ) AS c
        WHERE r.room > 0
    ), unkeyed AS (
        -- Jobs without a key take their turn as one more key, ahead of the walk.
        SELECT x.id, x.priority, row_number() OVER () AS turn, 0 AS pos, NULL::text AS k,
               false AS rated
        FROM (
            SELECT j.id, j.priority
            FROM pgqueue.jobs j
            WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key IS NULL
              AND j.run_at <= t
            ORDER BY j.concurrency_key, j.priority DESC, j.run_at, j.id  -- jobs_key_claim_idx
            LIMIT free
            FOR UPDATE SKIP LOCKED
        ) AS x
    ), chosen AS (
        SELECT c.id, c.pos, c.k, c.rated
        FROM (SELECT * FROM keyed UNION ALL SELECT * FROM unkeyed) AS c
        ORDER BY c.turn, c.priority DESC, c.pos
        LIMIT free
    )
    SELECT array_agg(c.id), array_agg(c.k) FILTER (WHERE c.rated), count(*),
           (SELECT c2.k FROM chosen c2 WHERE c2.k IS NOT NULL ORDER BY c2.pos DESC LIMIT 1),
           (SELECT w.k FROM walk w ORDER BY w.pos DESC LIMIT 1)
    INTO ids, rated_keys, n, last_served, last_seen
    FROM chosen c;

    -- The next claim's walk starts after the last key served; after the last key looked
    -- at when this claim found less than it could take.
    IF last_seen IS NOT NULL THEN
        UPDATE pgqueue.queue_limits
        SET key_cursor = CASE WHEN n < free OR last_served IS NULL THEN last_seen ELSE last_served END
        WHERE queue = queue_name;
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- By id, in a statement of its own: its plan is an index lookup whatever the plan
    -- cache decides (a join to the choice above could be planned as a scan of the table).
    -- state::text, not state: a plan made before the table had statistics matched the
    -- partial claim index's condition and scanned it whole (6-25 ms a claim, growing
    -- with the backlog) instead of looking the ids up by primary key (about 1.7 ms).
    RETURN QUERY
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = t, worker_id = worker,
        progress = NULL
    WHERE j.id = ANY (ids) AND j.state::text = 'queued'
    RETURNING j.*;
    IF lim.rate_count IS NOT NULL THEN
        INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
        VALUES (queue_name, '', t, n);
    END IF;
    IF rated_keys IS NOT NULL THEN
        INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
        SELECT queue_name, r.k, t, count(*) FROM unnest(rated_keys) AS r(k) GROUP BY r.k;
    END IF;
END
$$;
"""

CLAIM_LIMITED_BEFORE = r"""
CREATE OR REPLACE FUNCTION pgqueue.claim_limited(queue_name text, want integer, worker uuid)
RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    lim pgqueue.queue_limits;
    -- The claim's time: after the lock was granted, so later than every start logged.
    t timestamptz := clock_timestamp();
    free integer := want;
    running integer := 0;
    oldest interval;
    walk_max integer;
    ids bigint[];
    rated_keys text[];
    last_served text;
    last_seen text;
    n integer;
BEGIN
    SELECT * INTO lim FROM pgqueue.queue_limits WHERE queue = queue_name;
    IF NOT FOUND THEN
        RETURN;  -- limits cleared since the caller looked: the next claim treats it as plain
    END IF;
    IF lim.concurrency IS NOT NULL OR lim.key_concurrency IS NOT NULL
       OR EXISTS (SELECT FROM pgqueue.key_limits k WHERE k.queue = queue_name) THEN
        SELECT count(*) INTO running FROM pgqueue.jobs
        WHERE state = 'running' AND queue = queue_name;
    END IF;
    IF lim.concurrency IS NOT NULL THEN
        free := LEAST(free, lim.concurrency - running);
    END IF;
    oldest := GREATEST(lim.rate_period, lim.key_rate_period,
        (SELECT max(k.rate_period) FROM pgqueue.key_limits k WHERE k.queue = queue_name));
    IF oldest IS NOT NULL THEN
        DELETE FROM pgqueue.job_starts s WHERE s.queue = queue_name AND s.started_at <= t - oldest;
    END IF;
    IF lim.rate_count IS NOT NULL THEN
        free := LEAST(free, lim.rate_count - (
            SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
            WHERE s.queue = queue_name AND s.concurrency_key = '' AND s.started_at > t - lim.rate_period));
    END IF;
    IF free <= 0 THEN
        RETURN;
    END IF;
    -- How many keys to look at: every key that is full has a running job or a start in
    -- its window, so this many always reach `free` keys with room when there are any.
    -- A walk cut short resumes where it stopped at the next claim (key_cursor).
    walk_max := free + running + 100;

    -- Choose and lock the jobs (the claim proper follows, by id).
    WITH RECURSIVE walk(k, pos, first) AS (
        -- The loose index scan: each step is the key after the last one among the
        -- queue's queued jobs, wrapping round to the first (two descents of
        -- jobs_key_claim_idx at most), until `walk_max` keys or back at the first.
        SELECT n.k, 1, n.k
        FROM (SELECT COALESCE(
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key > lim.key_cursor),
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name)) AS k) AS n
        WHERE n.k IS NOT NULL
        UNION ALL
        SELECT n.k, w.pos + 1, w.first
        FROM walk w
        CROSS JOIN LATERAL (SELECT COALESCE(
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key > w.k),
            (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = queue_name)) AS k) AS n
        WHERE w.pos < walk_max AND n.k <> w.first
    ), room AS (
        SELECT w.k, w.pos, LEAST(free,
            CASE WHEN COALESCE(kl.concurrency, lim.key_concurrency) IS NOT NULL THEN
                COALESCE(kl.concurrency, lim.key_concurrency) - (
                    SELECT count(*) FROM pgqueue.jobs r
                    WHERE r.state = 'running' AND r.queue = queue_name AND r.concurrency_key = w.k)::integer
            END,
            CASE WHEN COALESCE(kl.rate_count, lim.key_rate_count) IS NOT NULL THEN
                COALESCE(kl.rate_count, lim.key_rate_count) - (
                    SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
                    WHERE s.queue = queue_name AND s.concurrency_key = w.k
                      AND s.started_at > t - COALESCE(kl.rate_period, lim.key_rate_period))::integer
            END) AS room,
            COALESCE(kl.rate_count, lim.key_rate_count) IS NOT NULL AS rated
        FROM walk w
        LEFT JOIN pgqueue.key_limits kl ON kl.queue = queue_name AND kl.concurrency_key = w.k
    ), keyed AS (
        SELECT c.id, c.priority, c.turn, r.pos, r.k, r.rated
        FROM room r
        CROSS JOIN LATERAL (
            SELECT x.id, x.priority, row_number() OVER () AS turn
            FROM (
                SELECT j.id, j.priority
                FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key = r.k
                  AND j.run_at <= t
                -- The key first: the order of jobs_key_claim_idx, which then serves it
                -- rather than a scan of the queue's claim order past other keys' jobs.
                ORDER BY j.concurrency_key, j.priority DESC, j.run_at, j.id
                LIMIT r.room
                FOR UPDATE SKIP LOCKED
            ) AS x
        ) AS c
        WHERE r.room > 0
    ), unkeyed AS (
        -- Jobs without a key take their turn as one more key, ahead of the walk.
        SELECT x.id, x.priority, row_number() OVER () AS turn, 0 AS pos, NULL::text AS k,
               false AS rated
        FROM (
            SELECT j.id, j.priority
            FROM pgqueue.jobs j
            WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key IS NULL
              AND j.run_at <= t
            ORDER BY j.concurrency_key, j.priority DESC, j.run_at, j.id  -- jobs_key_claim_idx
            LIMIT free
            FOR UPDATE SKIP LOCKED
        ) AS x
    ), chosen AS (
        SELECT c.id, c.pos, c.k, c.rated
        FROM (SELECT * FROM keyed UNION ALL SELECT * FROM unkeyed) AS c
        ORDER BY c.turn, c.priority DESC, c.pos
        LIMIT free
    )
    SELECT array_agg(c.id), array_agg(c.k) FILTER (WHERE c.rated), count(*),
           (SELECT c2.k FROM chosen c2 WHERE c2.k IS NOT NULL ORDER BY c2.pos DESC LIMIT 1),
           (SELECT w.k FROM walk w ORDER BY w.pos DESC LIMIT 1)
    INTO ids, rated_keys, n, last_served, last_seen
    FROM chosen c;

    -- The next claim's walk starts after the last key served; after the last key looked
    -- at when this claim found less than it could take.
    IF last_seen IS NOT NULL THEN
        UPDATE pgqueue.queue_limits
        SET key_cursor = CASE WHEN n < free OR last_served IS NULL THEN last_seen ELSE last_served END
        WHERE queue = queue_name;
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- By id, in a statement of its own: its plan is an index lookup whatever the plan
    -- cache decides (a join to the choice above could be planned as a scan of the table).
    RETURN QUERY
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = t, worker_id = worker,
        progress = NULL
    WHERE j.id = ANY (ids) AND j.state = 'queued'
    RETURNING j.*;
    IF lim.rate_count IS NOT NULL THEN
        INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
        VALUES (queue_name, '', t, n);
    END IF;
    IF rated_keys IS NOT NULL THEN
        INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
        SELECT queue_name, r.k, t, count(*) FROM unnest(rated_keys) AS r(k) GROUP BY r.k;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(CLAIM_LIMITED)


def downgrade() -> None:
    op.execute(CLAIM_LIMITED_BEFORE)
