-- Waiting for jobs to finish (pgqueue/results.py). Waiters are woken by the
-- pgqueue_finished notification (pgqueue.notify_finished in schema.sql) and look again
-- with wait_jobs, several waited jobs in one statement.

-- name: listen_finished
LISTEN pgqueue_finished;

-- name: wait_jobs
-- Of the jobs $1, those that have finished (the columns of get_job) and those that do
-- not exist (id NULL, waited_id the id asked for); jobs still unfinished give no row.
SELECT w.id AS waited_id, j.id, j.queue, j.task, j.args::text AS args,
       j.state::text AS state, j.priority, j.attempts, j.max_attempts, j.run_at,
       j.idempotency_key, j.result::text AS result, j.errors::text AS errors,
       j.created_at, j.started_at, j.finished_at,
       EXTRACT(EPOCH FROM j.timeout)::float8 AS timeout, j.progress::text AS progress,
       j.concurrency_key, j.unique_key, EXTRACT(EPOCH FROM j.unique_for)::float8 AS unique_for,
       EXTRACT(EPOCH FROM j.debounce)::float8 AS debounce, j.sequence_key,
       j.sequence_on_failure,
       CASE WHEN j.parents_waiting IS NOT NULL THEN
           (SELECT array_agg(d.parent_id ORDER BY d.position)
            FROM pgqueue.job_dependencies d WHERE d.job_id = j.id) END AS depends_on,
       j.on_parent_failure, j.parent_results_arg, j.trace_context::text AS trace_context
FROM unnest($1::bigint[]) AS w(id)
LEFT JOIN pgqueue.jobs AS j ON j.id = w.id
WHERE j.id IS NULL OR j.state IN ('succeeded', 'failed', 'cancelled');
