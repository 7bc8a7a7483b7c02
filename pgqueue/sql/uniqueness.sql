-- Unique windows and debouncing: a job's unique_key (see pgqueue/jobs.py, and the
-- schema's section "Unique windows and debounce"). Each is one statement, enforced by
-- a unique index, never by a read-then-write check. Parameters: the job's fields named
-- on each params line ($10, the idempotency key, is always NULL here: a job
-- takes one mode).

-- name: enqueue_unique
-- params: queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, idempotency_key, unique_key, unique_for, debounce, trace_context
-- One job with unique_for ($12 seconds) on key $11. The window row decides: inserted,
-- or taken over when expired, it names a new job (an id drawn here), written in the
-- same statement; held, the first branch returns nothing and the second the holder.
-- Windows are measured by statement_timestamp(), so that a long transaction opens its
-- window when it enqueues, not when it began. A concurrent enqueue that committed the
-- window after this statement's snapshot makes ON CONFLICT see its row (not expired, so
-- nothing returned) while the second branch cannot: no row comes back, and the caller
-- runs the statement again (pgqueue.driver, as for enqueue_idempotent). The second
-- branch checks the expiry too: a window it sees expired was taken over by a statement
-- it cannot see yet, and the next round sees that one.
WITH opened AS (
    INSERT INTO pgqueue.unique_windows AS w (unique_key, job_id, expires_at)
    VALUES ($11, nextval('pgqueue.jobs_id_seq'),
            statement_timestamp() + make_interval(secs => $12::float8))
    ON CONFLICT (unique_key) DO UPDATE
        SET job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at
        WHERE w.expires_at <= statement_timestamp()
    RETURNING w.job_id
), inserted AS (
    INSERT INTO pgqueue.jobs (id, queue, task, args, priority, max_attempts, run_at, timeout,
                              concurrency_key, idempotency_key, unique_key, unique_for, debounce,
                              trace_context)
    SELECT o.job_id, $1, $2, $3::jsonb, $4, $5,
           COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)),
           make_interval(secs => $8::float8), $9, $10, $11, make_interval(secs => $12::float8),
           make_interval(secs => $13::float8), $14::jsonb
    FROM opened o
    RETURNING id, created_at, run_at
)
SELECT id, false AS duplicate, created_at, run_at FROM inserted
UNION ALL
SELECT j.id, true AS duplicate, j.created_at, j.run_at
FROM pgqueue.unique_windows w
JOIN pgqueue.jobs j ON j.id = w.job_id
WHERE w.unique_key = $11
  AND w.expires_at > statement_timestamp()
  AND NOT EXISTS (SELECT FROM opened);

-- name: enqueue_debounced
-- params: queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, idempotency_key, unique_key, unique_for, debounce, trace_context
-- One job with debounce ($13 seconds) on key $11: inserted, or, when a job of the key
-- is pending (queued and never claimed: the partial unique index
-- jobs_debounce_pending_uniq), that job takes this enqueue's args and options and runs
-- no earlier than $13 seconds from now (and than the run_at or delay given), keeping
-- its id and created_at. A claim racing this statement: the claim's lock makes ON
-- CONFLICT wait, and once it commits the job is running, out of the index, so a new
-- job is inserted; this statement's lock makes the claim skip the row, and once this
-- one commits the claim's recheck sees the new run_at. Concurrent enqueues queue on
-- the row's lock: the last to commit leaves its args. An update wakes the job's queue
-- (its run_at may be sooner, or its queue another); an insert wakes it by trigger. The
-- trace context ($14) is the last enqueue's too, NULL included: the job runs what that
-- enqueue asked for, so its run belongs to that enqueue's trace, not to an earlier one.
WITH upserted AS (
    INSERT INTO pgqueue.jobs AS j (queue, task, args, priority, max_attempts, run_at, timeout,
                                   concurrency_key, idempotency_key, unique_key, unique_for,
                                   debounce, trace_context)
    VALUES ($1, $2, $3::jsonb, $4, $5,
            GREATEST(COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)),
                     now() + make_interval(secs => $13::float8)),
            make_interval(secs => $8::float8), $9, $10, $11, make_interval(secs => $12::float8),
            make_interval(secs => $13::float8), $14::jsonb)
    ON CONFLICT (unique_key) WHERE debounce IS NOT NULL AND state = 'queued' AND worker_id IS NULL
    DO UPDATE SET queue = EXCLUDED.queue, task = EXCLUDED.task, args = EXCLUDED.args,
                  priority = EXCLUDED.priority, max_attempts = EXCLUDED.max_attempts,
                  run_at = EXCLUDED.run_at, timeout = EXCLUDED.timeout,
                  concurrency_key = EXCLUDED.concurrency_key, debounce = EXCLUDED.debounce,
                  trace_context = EXCLUDED.trace_context
    -- xmax is set on the row an ON CONFLICT updated (it holds the row's lock), and is 0
    -- on the row it inserted.
    RETURNING j.id, j.xmax::text <> '0' AS duplicate, j.created_at, j.run_at, j.queue
), woken AS (
    SELECT pg_notify('pgqueue_enqueued', u.queue) FROM upserted u WHERE u.duplicate
)
SELECT u.id, u.duplicate, u.created_at, u.run_at, (SELECT count(*) FROM woken) AS woken
FROM upserted u;
