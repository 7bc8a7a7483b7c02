-- Flow control: setting and reading concurrency and rate limits (pgqueue/flow.py).
-- The claim that enforces them is claim_jobs in queries.sql, with
-- pgqueue.claim_limited_queues in schema.sql. Periods go in as seconds.

-- name: set_queue_limit
-- A queue's limits, all replaced: $2 concurrency, $3/$4 rate (count, seconds), $5 per-key
-- concurrency, $6/$7 per-key rate. NULL: no limit of that kind.
SELECT pgqueue.set_queue_limit(
    $1,
    $2::integer,
    $3::integer,
    make_interval(secs => $4::float8),
    $5::integer,
    $6::integer,
    make_interval(secs => $7::float8));

-- name: clear_queue_limit
SELECT pgqueue.clear_queue_limit($1);

-- name: set_key_limit
-- One key's own limits: $3 concurrency, $4/$5 rate (count, seconds).
SELECT pgqueue.set_key_limit($1, $2, $3::integer, $4::integer, make_interval(secs => $5::float8));

-- name: clear_key_limit
SELECT pgqueue.clear_key_limit($1, $2);

-- name: limit_status
-- Every limited queue and its keys with an override or jobs running ($1: one queue, or
-- NULL for all), the queue's own row first.
SELECT queue, concurrency_key, concurrency, running, rate_count, rate_period,
       recent_starts, queued
FROM pgqueue.limit_status
WHERE $1::text IS NULL OR queue = $1
ORDER BY queue, concurrency_key NULLS FIRST;

-- name: claim_jobs_limited
-- claim_jobs for a worker some of whose queues are limited (pgqueue.queue_limits), in
-- one statement. The limited queues are claimed by pgqueue.claim_limited_queues under
-- their advisory locks (lock space $4): first for their share of $2 (all of it when
-- every queue is limited), then the plain queues as in claim_jobs for what is left,
-- then the limited ones again for what the plain ones left. Ends with a marker row (id
-- NULL) while any of the queues is limited; without one the worker goes back to
-- claim_jobs, whose plan is cheaper.
WITH served AS MATERIALIZED (
    SELECT u.name, u.ord,
           EXISTS (SELECT FROM pgqueue.queue_limits l WHERE l.queue = u.name) AS limited
    FROM unnest($1::text[]) WITH ORDINALITY AS u(name, ord)
    WHERE NOT EXISTS (SELECT FROM pgqueue.queues p WHERE p.name = u.name AND p.paused)
), shares AS MATERIALIZED (
    SELECT ARRAY(SELECT name FROM served WHERE limited ORDER BY ord) AS names,
           count(*) FILTER (WHERE limited) AS limited, count(*) AS served
    FROM served
), first_limited AS MATERIALIZED (
    SELECT c.*
    FROM shares s
    CROSS JOIN LATERAL pgqueue.claim_limited_queues(
        s.names, ceil($2::integer * s.limited::numeric / s.served)::integer, $3::uuid,
        $4::integer) AS c  -- pgqueue.locks.FLOW
    WHERE s.limited > 0
), candidates AS (
    SELECT c.id
    FROM served AS q
    CROSS JOIN LATERAL (
        SELECT x.id, x.priority, x.run_at, row_number() OVER () AS turn
        FROM (
            SELECT j.id, j.priority, j.run_at
            FROM pgqueue.jobs j
            WHERE j.state = 'queued' AND j.queue = q.name AND j.run_at <= now()
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ) AS x
    ) AS c
    WHERE NOT q.limited
    ORDER BY c.turn, c.priority DESC, c.run_at, c.id
    LIMIT $2::integer - (SELECT count(*) FROM first_limited)
), plain AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = $3::uuid,
        progress = NULL
    -- An array, not a join: a generic plan cannot know how few candidates there are,
    -- and would hash the whole table to join them.
    WHERE j.id = ANY (ARRAY(SELECT c.id FROM candidates c))
    RETURNING j.*
), second_limited AS (
    SELECT c.*
    FROM shares s
    CROSS JOIN LATERAL pgqueue.claim_limited_queues(
        s.names,
        $2::integer - (SELECT count(*) FROM first_limited)::integer
            - (SELECT count(*) FROM plain)::integer,
        $3::uuid, $4::integer) AS c
    WHERE s.limited > 0 AND s.limited < s.served
), claimed AS (
    SELECT * FROM first_limited
    UNION ALL
    SELECT * FROM plain
    UNION ALL
    SELECT * FROM second_limited
)
SELECT id, queue, task, args::text AS args, priority, attempts AS attempt, max_attempts,
       EXTRACT(EPOCH FROM timeout)::float8 AS timeout
FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM shares s
WHERE s.limited > 0;
