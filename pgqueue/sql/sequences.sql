-- Sequences: jobs sharing a sequence_key run one at a time, in enqueue order (see the
-- schema's section "Sequences"). A job behind an unfinished one of its sequence is
-- written 'blocked', which no claim looks at; the triggers on pgqueue.jobs queue the
-- next one when the job ahead finishes. Parameters: the job's fields named on the
-- params line ($10-$13, the other keys, are always NULL here).

-- name: enqueue_sequenced
-- params: queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, idempotency_key, unique_key, unique_for, debounce, sequence_key, sequence_on_failure, trace_context
-- The sequence's row counts its unfinished jobs. ON CONFLICT DO UPDATE counts on the
-- row as last committed (it waits for a concurrent enqueue or finish to commit, then
-- locks the row until this transaction ends), never on this statement's snapshot: the
-- job is queued when it is the only unfinished one, else blocked. A job finishing
-- meanwhile waits on the same row (pgqueue.sequence_job_finished), so that it sees this
-- job once it has committed.
WITH counted AS (
    INSERT INTO pgqueue.sequences AS s (sequence_key, unfinished)
    VALUES ($14, 1)
    ON CONFLICT (sequence_key) DO UPDATE SET unfinished = s.unfinished + 1
    RETURNING s.unfinished
)
INSERT INTO pgqueue.jobs (queue, task, args, priority, max_attempts, run_at, timeout,
                          concurrency_key, idempotency_key, unique_key, unique_for, debounce,
                          sequence_key, sequence_on_failure, trace_context, state)
SELECT $1, $2, $3::jsonb, $4, $5,
       COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)),
       make_interval(secs => $8::float8), $9, $10, $11, make_interval(secs => $12::float8),
       make_interval(secs => $13::float8), $14, $15, $16::jsonb,
       (CASE WHEN c.unfinished = 1 THEN 'queued' ELSE 'blocked' END)::pgqueue.job_state
FROM counted c
RETURNING id, false AS duplicate, created_at, run_at, state::text AS state;

-- name: sequence_status
-- The sequences with unfinished jobs, by key, at most $1 (see pgqueue.sequence_status).
SELECT sequence_key, unfinished, head_job_id, head_state::text AS head_state, head_queue
FROM pgqueue.sequence_status
ORDER BY sequence_key
LIMIT $1;
