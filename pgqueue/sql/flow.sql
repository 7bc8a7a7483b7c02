-- Flow control: setting and reading concurrency and rate limits (pgqueue/flow.py).
-- The claim that enforces them is claim_jobs_limited below, over the functions
-- pgqueue.claim_jobs_limited and claim_limited_queues in schema.sql. Periods go in as
-- seconds.

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

-- name: reserve_starts
-- Before a claim of queues some of which are limited, as a transaction of its own (it
-- commits asynchronously): the starts of each rate-only queue among $1 reserved for up
-- to $2 jobs, under its lock (lock space $3; pgqueue.reserve_starts in schema.sql). One
-- row per limited queue of $1 that is not paused; granted NULL: not rate-only, its
-- claim takes the lock.
SELECT queue_name, granted, at
FROM pgqueue.reserve_starts($1::text[], $2::integer, $3::integer, true);

-- name: claim_jobs_limited
-- claim_jobs for a worker some of whose queues are limited (pgqueue.queue_limits): the
-- limited queues under their advisory locks (lock space $4), but those with starts
-- reserved ($5 queues in name order, $6 granted, $7 reserved at: reserve_starts above),
-- which take them without a lock, and the plain ones as in claim_jobs, in one call
-- (pgqueue.claim_jobs_limited in schema.sql). Ends with a marker row (id NULL) while
-- any of the queues is limited; without one the worker goes back to claim_jobs, whose
-- plan is cheaper.
SELECT id, queue, task, args::text AS args, priority, attempts AS attempt, max_attempts,
       EXTRACT(EPOCH FROM timeout)::float8 AS timeout, trace_context::text AS trace_context
FROM pgqueue.claim_jobs_limited($1::text[], $2::integer, $3::uuid, $4::integer,
                                $5::text[], $6::integer[], $7::timestamptz[]);

-- name: complete_and_claim_limited
-- complete_succeeded (queries.sql) and claim_jobs_limited above in one statement, one
-- round trip and one commit: $1-$3 the outcomes (ids, results, attempts), $4-$7 the claim
-- (queues, how many, worker, lock space). The lateral reference makes the claim run after
-- the write, and the claim's statements (pgqueue.claim_limited, volatile, each with a
-- snapshot of its own taken after the queue's lock) see the slots this write freed: a
-- worker at its queue's limit frees and refills its slots at the same commit, with no
-- gap in which they stand free and no second round trip. Returns the claimed jobs and
-- the marker row (id NULL) of claim_jobs_limited. No reservations: every limited queue
-- under its lock (a worker whose limited queues are all rate-only makes no refills).
WITH done AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'succeeded', result = d.result::jsonb, finished_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::integer[]) AS d(id, result, attempt)
    -- State as text: see complete_succeeded (queries.sql).
    WHERE j.id = d.id AND j.state::text = 'running' AND j.attempts = d.attempt
    RETURNING j.id
), told AS (
    SELECT count(*) AS n,
           CASE WHEN count(*) > 0 THEN pgqueue.notify_finished(array_agg(id)) END AS sent
    FROM done
)
SELECT c.id, c.queue, c.task, c.args::text AS args, c.priority, c.attempts AS attempt,
       c.max_attempts, EXTRACT(EPOCH FROM c.timeout)::float8 AS timeout,
       c.trace_context::text AS trace_context
FROM told
CROSS JOIN LATERAL pgqueue.claim_jobs_limited(
    $4::text[], $5::integer + 0 * told.n::integer, $6::uuid, $7::integer,
    '{}', '{}', '{}') AS c;
