"""Flow control: concurrency and rate limits per queue and per concurrency_key, and
turns between keys, enforced by the claim across every worker (pgqueue/flow.py):
pgqueue.queue_limits, pgqueue.key_limits, the rate limits' sliding log
pgqueue.job_starts, the claim functions pgqueue.claim_jobs_limited, claim_limited_queues
and claim_limited (claim_jobs_limited in flow.sql calls them), pgqueue.limited_queue_due (an idle worker's alarm), the functions
set_queue_limit, clear_queue_limit, set_key_limit, clear_key_limit and the view
pgqueue.limit_status.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
-- Flow control (0012): concurrency and rate limits per queue and per concurrency_key,
-- and turns between keys, all enforced by the claim (claim_jobs in queries.sql) across every
-- worker. A queue with a row in pgqueue.queue_limits is "limited": its claims take an
-- advisory lock per queue, count, then claim at most what is free. Every other queue
-- is claimed as before, without any of this.
CREATE TABLE pgqueue.queue_limits (
    queue           text PRIMARY KEY,
    -- Running jobs of the queue at once; NULL: no limit.
    concurrency     integer,
    -- Job starts (claims) per rate_period; both NULL or neither.
    rate_count      integer,
    rate_period     interval,
    -- The default for each concurrency_key of the queue (pgqueue.key_limits overrides).
    key_concurrency integer,
    key_rate_count  integer,
    key_rate_period interval,
    -- Where the turns between keys stand: the last key a claim served or looked at.
    key_cursor      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queue_limits_queue_check
        CHECK (length(queue) <= 64 AND queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$'),
    CONSTRAINT queue_limits_concurrency_check
        CHECK (concurrency BETWEEN 1 AND 1000000 AND key_concurrency BETWEEN 1 AND 1000000),
    CONSTRAINT queue_limits_rate_check CHECK (
        (rate_count IS NULL) = (rate_period IS NULL)
        AND (key_rate_count IS NULL) = (key_rate_period IS NULL)
        AND rate_count BETWEEN 1 AND 1000000 AND key_rate_count BETWEEN 1 AND 1000000
        AND rate_period BETWEEN interval '1 millisecond' AND interval '366 days'
        AND key_rate_period BETWEEN interval '1 millisecond' AND interval '366 days')
);

COMMENT ON TABLE pgqueue.queue_limits IS
    'Flow control per queue: concurrency and rate limits of the queue and of each of its keys; a queue listed here has its keys take turns.';

-- One key's own limits, instead of its queue's key_concurrency / key_rate defaults.
CREATE TABLE pgqueue.key_limits (
    queue           text NOT NULL REFERENCES pgqueue.queue_limits (queue) ON DELETE CASCADE,
    concurrency_key text NOT NULL,
    concurrency     integer,
    rate_count      integer,
    rate_period     interval,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, concurrency_key),
    CONSTRAINT key_limits_key_check CHECK (length(concurrency_key) BETWEEN 1 AND 255),
    CONSTRAINT key_limits_concurrency_check CHECK (concurrency BETWEEN 1 AND 1000000),
    CONSTRAINT key_limits_rate_check CHECK (
        (rate_count IS NULL) = (rate_period IS NULL)
        AND rate_count BETWEEN 1 AND 1000000
        AND rate_period BETWEEN interval '1 millisecond' AND interval '366 days')
);

COMMENT ON TABLE pgqueue.key_limits IS 'Per-key overrides of a limited queue''s key limits.';

-- The sliding log of the rate limits: one row per claim of a rate-limited queue
-- (concurrency_key '') or key, at the claim's clock time, with how many jobs it started
-- (one row per claim, not per job: a claim counts the rows of one window, fewer by the
-- batch size). A rate is exact: a claim starts k jobs at t only if the log holds at
-- most N - k starts in (t - period, t]. Rows older than the longest period of their
-- queue are deleted by the claims.
CREATE TABLE pgqueue.job_starts (
    queue           text NOT NULL,
    concurrency_key text NOT NULL,
    started_at      timestamptz NOT NULL,
    starts          integer NOT NULL,
    CONSTRAINT job_starts_starts_check CHECK (starts >= 1)
);

CREATE INDEX job_starts_key_idx ON pgqueue.job_starts (queue, concurrency_key, started_at);
CREATE INDEX job_starts_age_idx ON pgqueue.job_starts (queue, started_at);

-- Turns between keys: a loose index scan walks the distinct keys of a queue's queued
-- jobs (one descent per key, never a scan of a key's backlog), then takes each key's
-- jobs in claim order. Unkeyed jobs are in it too (NULL), so that a limited queue finds
-- them without stepping over keyed ones.
CREATE INDEX jobs_key_claim_idx ON pgqueue.jobs (queue, concurrency_key, priority DESC, run_at, id)
    WHERE state = 'queued';

-- What a limited claim counts: the running jobs of a queue, and of each of its keys.
CREATE INDEX jobs_running_key_idx ON pgqueue.jobs (queue, concurrency_key) WHERE state = 'running';

-- Claim up to `want` jobs of one limited queue. The caller holds the queue's advisory
-- lock, and this function's statements each take a snapshot after it was granted, so
-- that they see every claim made before (no two claims count the same free slot).
--
-- Generic plans (plan_cache_mode): its statements are planned once per session and
-- reused. A custom plan would plan the key walk below anew at every claim, which cost
-- more than running it (about 1 ms a claim, and the claims of a queue take turns).
CREATE FUNCTION pgqueue.claim_limited(queue_name text, want integer, worker uuid)
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

-- The limited queues' part of a claim (claim_jobs in queries.sql, which claims the
-- other queues itself, as cheaply as before limits existed): up to `want` jobs of
-- these queues for `worker`. First the advisory lock of every one of them (two-key
-- form: lock_space, hashtext(queue)), all in one statement and in key order, so that
-- two claims never wait on each other crosswise; the locks last until the claim
-- commits. Each queue is then offered an equal share of `want`, and what is left over
-- goes to those that filled their share.
CREATE FUNCTION pgqueue.claim_limited_queues(
    queue_names text[], want integer, worker uuid, lock_space integer
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    got integer := 0;
    asked integer;
    n integer;
    share integer;
    short text[] := '{}';
BEGIN
    IF want <= 0 OR cardinality(queue_names) = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(lock_space, h.key)
    FROM (SELECT DISTINCT hashtext(x) AS key FROM unnest(queue_names) AS x ORDER BY 1) AS h;
    share := ceil(want::numeric / cardinality(queue_names));
    FOREACH q IN ARRAY queue_names LOOP
        asked := LEAST(share, want - got);
        EXIT WHEN asked <= 0;
        RETURN QUERY SELECT * FROM pgqueue.claim_limited(q, asked, worker);
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
        IF n < asked THEN
            short := short || q;
        END IF;
    END LOOP;
    FOREACH q IN ARRAY queue_names LOOP
        EXIT WHEN got >= want;
        CONTINUE WHEN q = ANY (short);
        RETURN QUERY SELECT * FROM pgqueue.claim_limited(q, want - got, worker);
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END LOOP;
END
$$;

-- claim_jobs for a worker some of whose queues are limited (claim_jobs_limited in
-- flow.sql is a call of this): up to `want` jobs of `queue_names` for `worker`, paused
-- queues skipped. The limited ones are claimed by claim_limited_queues under their
-- advisory locks (lock space `lock_space`): first for their share of `want` (all of it
-- when every queue is limited), then the plain queues as claim_jobs claims them for
-- what is left, then the limited ones again for what the plain ones left. Ends with a
-- row of NULLs (a marker) while any of the queues is limited; without one the worker
-- goes back to claim_jobs, whose plan is cheaper.
-- A function, with generic plans, rather than one statement: planned afresh at each
-- claim (the server chooses custom plans for a statement this size), the statement
-- cost half a millisecond more than claim_jobs, every claim, in planning alone.
CREATE FUNCTION pgqueue.claim_jobs_limited(
    queue_names text[], want integer, worker uuid, lock_space integer
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    limited text[];
    plain text[];
    got integer := 0;
    n integer;
BEGIN
    SELECT COALESCE(array_agg(u.name ORDER BY u.ord) FILTER (WHERE l.queue IS NOT NULL), '{}'),
           COALESCE(array_agg(u.name ORDER BY u.ord) FILTER (WHERE l.queue IS NULL), '{}')
    INTO limited, plain
    FROM unnest(queue_names) WITH ORDINALITY AS u(name, ord)
    LEFT JOIN pgqueue.queue_limits l ON l.queue = u.name
    WHERE NOT EXISTS (SELECT FROM pgqueue.queues p WHERE p.name = u.name AND p.paused);
    IF cardinality(limited) > 0 THEN
        RETURN QUERY SELECT * FROM pgqueue.claim_limited_queues(limited,
            ceil(want * cardinality(limited)::numeric
                 / (cardinality(limited) + cardinality(plain)))::integer,
            worker, lock_space);
        GET DIAGNOSTICS got = ROW_COUNT;
    END IF;
    IF cardinality(plain) > 0 AND got < want THEN
        -- As claim_jobs: each queue in claim order, taking turns by rank.
        RETURN QUERY
        UPDATE pgqueue.jobs AS j
        SET state = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = worker,
            progress = NULL
        -- An array, not a join: a generic plan cannot know how few candidates there are.
        WHERE j.id = ANY (ARRAY(
            SELECT c.id
            FROM unnest(plain) AS q(name)
            CROSS JOIN LATERAL (
                SELECT x.id, x.priority, x.run_at, row_number() OVER () AS turn
                FROM (
                    SELECT c1.id, c1.priority, c1.run_at
                    FROM pgqueue.jobs c1
                    WHERE c1.state = 'queued' AND c1.queue = q.name AND c1.run_at <= now()
                    ORDER BY c1.priority DESC, c1.run_at, c1.id
                    LIMIT want - got
                    FOR UPDATE SKIP LOCKED
                ) AS x
            ) AS c
            ORDER BY c.turn, c.priority DESC, c.run_at, c.id
            LIMIT want - got))
        RETURNING j.*;
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
        IF cardinality(limited) > 0 AND got < want THEN
            RETURN QUERY SELECT * FROM pgqueue.claim_limited_queues(limited, want - got, worker,
                                                                    lock_space);
        END IF;
    END IF;
    IF cardinality(limited) > 0 THEN
        RETURN NEXT NULL::pgqueue.jobs;  -- the marker
    END IF;
END
$$;

-- When a limited queue may next have a job to claim that it cannot claim now, by the
-- database's clock: its next delayed job, or when its rate window (or that of a key
-- with jobs waiting) lets one more start in. NULL when only a running job's finish can
-- free a slot: its worker claims again then, and the others on an enqueue or their poll.
CREATE FUNCTION pgqueue.limited_queue_due(queue_name text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan  -- as claim_limited
AS $$
DECLARE
    lim pgqueue.queue_limits;
    t timestamptz := clock_timestamp();
    n bigint;
    rate_due timestamptz;
    key_due timestamptz;
    delayed timestamptz;
BEGIN
    SELECT * INTO lim FROM pgqueue.queue_limits WHERE queue = queue_name;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF lim.rate_count IS NOT NULL THEN
        SELECT COALESCE(sum(s.starts), 0) INTO n FROM pgqueue.job_starts s
        WHERE s.queue = queue_name AND s.concurrency_key = '' AND s.started_at > t - lim.rate_period;
        IF n >= lim.rate_count THEN
            -- The claim whose leaving the window makes room for one more start: the
            -- first, oldest first, by which n - N + 1 starts have left.
            SELECT w.started_at + lim.rate_period INTO rate_due
            FROM (
                SELECT s.started_at, sum(s.starts) OVER (ORDER BY s.started_at) AS gone
                FROM pgqueue.job_starts s
                WHERE s.queue = queue_name AND s.concurrency_key = ''
                  AND s.started_at > t - lim.rate_period
            ) AS w
            WHERE w.gone >= n - lim.rate_count + 1
            ORDER BY w.started_at LIMIT 1;
        END IF;
    END IF;
    -- Keys whose window is full and that have jobs waiting: the first start to leave.
    SELECT min(f.due) INTO key_due FROM (
        SELECT min(s.started_at) + COALESCE(kl.rate_period, lim.key_rate_period) AS due
        FROM pgqueue.job_starts s
        LEFT JOIN pgqueue.key_limits kl ON kl.queue = s.queue AND kl.concurrency_key = s.concurrency_key
        WHERE s.queue = queue_name AND s.concurrency_key <> ''
          AND s.started_at > t - COALESCE(kl.rate_period, lim.key_rate_period)
          AND EXISTS (SELECT FROM pgqueue.jobs j
                      WHERE j.state = 'queued' AND j.queue = queue_name
                        AND j.concurrency_key = s.concurrency_key AND j.run_at <= t)
        GROUP BY s.concurrency_key, kl.rate_count, kl.rate_period
        HAVING sum(s.starts) >= COALESCE(kl.rate_count, lim.key_rate_count)
    ) AS f;
    SELECT min(j.run_at) INTO delayed FROM pgqueue.jobs j
    WHERE j.state = 'queued' AND j.queue = queue_name AND j.run_at > t;
    RETURN LEAST(rate_due, key_due, delayed);
END
$$;

-- Set a queue's limits; NULL leaves that kind unlimited, and every call replaces them
-- all. Workers are woken: a raised limit lets them claim at once.
CREATE FUNCTION pgqueue.set_queue_limit(
    queue_name text,
    concurrency integer DEFAULT NULL,
    rate_count integer DEFAULT NULL,
    rate_period interval DEFAULT NULL,
    key_concurrency integer DEFAULT NULL,
    key_rate_count integer DEFAULT NULL,
    key_rate_period interval DEFAULT NULL
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.queue_limits AS l (queue, concurrency, rate_count, rate_period,
                                           key_concurrency, key_rate_count, key_rate_period)
    VALUES (queue_name, concurrency, rate_count, rate_period,
            key_concurrency, key_rate_count, key_rate_period)
    ON CONFLICT (queue) DO UPDATE
    SET concurrency = EXCLUDED.concurrency, rate_count = EXCLUDED.rate_count,
        rate_period = EXCLUDED.rate_period, key_concurrency = EXCLUDED.key_concurrency,
        key_rate_count = EXCLUDED.key_rate_count, key_rate_period = EXCLUDED.key_rate_period,
        updated_at = now();
    SELECT pg_notify('pgqueue_enqueued', queue_name);
$$;

-- Remove a queue's limits and its keys' overrides: its claims are plain again. False
-- when it had none.
CREATE FUNCTION pgqueue.clear_queue_limit(queue_name text) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM pgqueue.queue_limits WHERE queue = queue_name RETURNING 1),
    woken AS (SELECT pg_notify('pgqueue_enqueued', queue_name))
    SELECT EXISTS (SELECT FROM gone) FROM woken;
$$;

-- One key's own limits (replacing its queue's key defaults); the queue becomes limited
-- (its keys take turns) if it was not.
CREATE FUNCTION pgqueue.set_key_limit(
    queue_name text,
    key text,
    concurrency integer DEFAULT NULL,
    rate_count integer DEFAULT NULL,
    rate_period interval DEFAULT NULL
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO pgqueue.queue_limits (queue) VALUES (queue_name) ON CONFLICT (queue) DO NOTHING;
    INSERT INTO pgqueue.key_limits (queue, concurrency_key, concurrency, rate_count, rate_period)
    VALUES (queue_name, key, concurrency, rate_count, rate_period)
    ON CONFLICT (queue, concurrency_key) DO UPDATE
    SET concurrency = EXCLUDED.concurrency, rate_count = EXCLUDED.rate_count,
        rate_period = EXCLUDED.rate_period, updated_at = now();
    SELECT pg_notify('pgqueue_enqueued', queue_name);
$$;

-- Remove one key's overrides (it takes its queue's key defaults again); false if none.
CREATE FUNCTION pgqueue.clear_key_limit(queue_name text, key text) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM pgqueue.key_limits WHERE queue = queue_name AND concurrency_key = key
        RETURNING 1
    ), woken AS (SELECT pg_notify('pgqueue_enqueued', queue_name))
    SELECT EXISTS (SELECT FROM gone) FROM woken;
$$;

-- Every limited queue (concurrency_key NULL) and every key of one that has an override
-- or jobs running, beside its limits: running jobs against the concurrency limit,
-- starts in the current rate window against the rate, and jobs queued.
CREATE VIEW pgqueue.limit_status AS
SELECT l.queue,
       NULL::text AS concurrency_key,
       l.concurrency,
       (SELECT count(*) FROM pgqueue.jobs j WHERE j.state = 'running' AND j.queue = l.queue) AS running,
       l.rate_count,
       l.rate_period,
       (SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
        WHERE s.queue = l.queue AND s.concurrency_key = '' AND s.started_at > now() - l.rate_period)
           AS recent_starts,
       (SELECT count(*) FROM pgqueue.jobs j WHERE j.state = 'queued' AND j.queue = l.queue) AS queued
FROM pgqueue.queue_limits l
UNION ALL
SELECT k.queue,
       k.concurrency_key,
       COALESCE(kl.concurrency, l.key_concurrency),
       (SELECT count(*) FROM pgqueue.jobs j
        WHERE j.state = 'running' AND j.queue = k.queue AND j.concurrency_key = k.concurrency_key),
       COALESCE(kl.rate_count, l.key_rate_count),
       COALESCE(kl.rate_period, l.key_rate_period),
       (SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
        WHERE s.queue = k.queue AND s.concurrency_key = k.concurrency_key
          AND s.started_at > now() - COALESCE(kl.rate_period, l.key_rate_period)),
       (SELECT count(*) FROM pgqueue.jobs j
        WHERE j.state = 'queued' AND j.queue = k.queue AND j.concurrency_key = k.concurrency_key)
FROM (
    SELECT kl2.queue, kl2.concurrency_key FROM pgqueue.key_limits kl2
    UNION
    SELECT j.queue, j.concurrency_key FROM pgqueue.jobs j
    WHERE j.state = 'running' AND j.concurrency_key IS NOT NULL
      AND j.queue IN (SELECT queue FROM pgqueue.queue_limits)
) AS k
JOIN pgqueue.queue_limits l ON l.queue = k.queue
LEFT JOIN pgqueue.key_limits kl ON kl.queue = k.queue AND kl.concurrency_key = k.concurrency_key;
"""

DOWNGRADE_SQL = """
DROP VIEW pgqueue.limit_status;
DROP FUNCTION pgqueue.clear_key_limit(text, text);
DROP FUNCTION pgqueue.set_key_limit(text, text, integer, integer, interval);
DROP FUNCTION pgqueue.clear_queue_limit(text);
DROP FUNCTION pgqueue.set_queue_limit(text, integer, integer, interval, integer, integer, interval);
DROP FUNCTION pgqueue.limited_queue_due(text);
DROP FUNCTION pgqueue.claim_jobs_limited(text[], integer, uuid, integer);
DROP FUNCTION pgqueue.claim_limited_queues(text[], integer, uuid, integer);
DROP FUNCTION pgqueue.claim_limited(text, integer, uuid);
DROP INDEX pgqueue.jobs_running_key_idx;
DROP INDEX pgqueue.jobs_key_claim_idx;
DROP TABLE pgqueue.job_starts;
DROP TABLE pgqueue.key_limits;
DROP TABLE pgqueue.queue_limits;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
