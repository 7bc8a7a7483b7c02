-- Workflows: jobs that wait for other jobs (depends_on), and the workflows of
-- pgqueue/workflows.py (see the schema's section "Workflows"). A dependant is written
-- 'blocked', which no claim looks at; the trigger on its parents' end queues or cancels
-- it. Both enqueues are one statement, pgqueue.enqueue_dependants: atomic inside a
-- caller's transaction without a savepoint of its own.

-- name: enqueue_dependent
-- params: queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, depends_on, on_parent_failure, parent_results_arg, trace_context
-- One job and its parents ($10, existing jobs). Its state is that of the job as
-- written: blocked, or queued (or cancelled) when its parents had all ended already.
SELECT out_id AS id, false AS duplicate, out_created_at AS created_at, out_run_at AS run_at,
       out_state AS state
FROM pgqueue.enqueue_dependants(
    NULL, false, ARRAY[$1::text], ARRAY[$2::text], ARRAY[$3::text], ARRAY[$4::smallint],
    ARRAY[$5::integer], ARRAY[$6::timestamptz], ARRAY[$7::float8], ARRAY[$8::float8],
    ARRAY[$9::text], ARRAY[$11::text], ARRAY[$12::text],
    array_fill(1, ARRAY[cardinality($10::bigint[])]),
    array_fill(NULL::integer, ARRAY[cardinality($10::bigint[])]),
    $10::bigint[], ARRAY[$13::text]);

-- name: enqueue_workflow
-- A whole workflow: its name ($1), its jobs' fields as arrays in input order ($2-$12,
-- and $16 their trace contexts), its edges ($13 the waiting job's 1-based index, $14 a
-- parent's index in the batch or $15 an existing job's id). One row per job, in input
-- order.
SELECT out_workflow_id AS workflow_id, out_id AS id, out_state AS state
FROM pgqueue.enqueue_dependants(
    $1::text, true, $2::text[], $3::text[], $4::text[], $5::smallint[], $6::integer[],
    $7::timestamptz[], $8::float8[], $9::float8[], $10::text[], $11::text[], $12::text[],
    $13::integer[], $14::integer[], $15::bigint[], $16::text[]);

-- name: get_workflow
-- The workflow $1 and its jobs (the columns of get_job), by id; no row when there is no
-- such workflow, one row with job columns NULL when its jobs are all gone.
SELECT w.id AS workflow_id, w.name AS workflow_name, w.created_at AS workflow_created_at,
       w.jobs AS workflow_jobs, j.id, j.queue, j.task, j.args::text AS args,
       j.state::text AS state, j.priority, j.attempts, j.max_attempts, j.run_at,
       j.idempotency_key, j.result::text AS result, j.errors::text AS errors, j.created_at,
       j.started_at, j.finished_at, EXTRACT(EPOCH FROM j.timeout)::float8 AS timeout,
       j.progress::text AS progress, j.concurrency_key, j.unique_key,
       EXTRACT(EPOCH FROM j.unique_for)::float8 AS unique_for,
       EXTRACT(EPOCH FROM j.debounce)::float8 AS debounce, j.sequence_key,
       j.sequence_on_failure,
       CASE WHEN j.parents_waiting IS NOT NULL THEN
           (SELECT array_agg(d.parent_id ORDER BY d.position)
            FROM pgqueue.job_dependencies d WHERE d.job_id = j.id) END AS depends_on,
       j.on_parent_failure, j.parent_results_arg, j.trace_context::text AS trace_context
FROM pgqueue.workflows w
LEFT JOIN pgqueue.jobs j ON j.workflow_id = w.id
WHERE w.id = $1
ORDER BY j.id;

-- name: list_workflows
-- The newest workflows first, one page: those with an id below $1 (the cursor; NULL for
-- the first page), at most $2, each with its jobs counted by state (by jobs_workflow_idx:
-- a page costs its workflows' jobs, not the table). Columns as pgqueue.workflow_status.
SELECT w.id AS workflow_id, w.name, w.created_at, w.jobs AS total, c.blocked, c.queued,
       c.running, c.succeeded, c.failed, c.cancelled, c.finished_at
FROM pgqueue.workflows w
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE j.state::text = 'blocked') AS blocked,
           count(*) FILTER (WHERE j.state = 'queued') AS queued,
           count(*) FILTER (WHERE j.state = 'running') AS running,
           count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE j.state = 'failed') AS failed,
           count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
           max(j.finished_at) AS finished_at
    FROM pgqueue.jobs j
    WHERE j.workflow_id = w.id
) AS c
WHERE ($1::bigint IS NULL OR w.id < $1)
ORDER BY w.id DESC
LIMIT $2;
