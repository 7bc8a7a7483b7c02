-- Every statement pgqueue runs, one named block each, loaded by pgqueue.sql.load().
-- Placeholders are $1, $2, ...: asyncpg and psycopg's raw cursors both take them, so
-- one text serves both drivers. JSON goes in and out as text (args::text) so that the
-- drivers' different jsonb codecs never matter.

-- name: enqueue
-- params: queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, trace_context
-- One job, no idempotency key: a plain INSERT, as cheap as the table allows. Also
-- returns the two values the database decides (created_at, run_at), so that the new
-- job can be described without reading it back.
INSERT INTO pgqueue.jobs (queue, task, args, priority, max_attempts, run_at, timeout, concurrency_key,
                          trace_context)
VALUES ($1, $2, $3::jsonb, $4, $5, COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)),
        make_interval(secs => $8::float8), $9, $10::jsonb)
RETURNING id, false AS duplicate, created_at, run_at;

-- name: enqueue_idempotent
-- params: queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, idempotency_key, trace_context
-- One job with a key. The unique index decides; a conflict returns the holder. When the
-- holder was committed after this statement's snapshot was taken, the second branch
-- sees nothing and the caller runs the statement again (a new snapshot sees it).
WITH inserted AS (
    INSERT INTO pgqueue.jobs (queue, task, args, priority, max_attempts, run_at, timeout, concurrency_key,
                              idempotency_key, trace_context)
    VALUES ($1, $2, $3::jsonb, $4, $5, COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)),
            make_interval(secs => $8::float8), $9, $10, $11::jsonb)
    ON CONFLICT (idempotency_key)
        WHERE idempotency_key IS NOT NULL AND state IN ('queued', 'running', 'succeeded')
        DO NOTHING
    RETURNING id, created_at, run_at
)
SELECT id, false AS duplicate, created_at, run_at FROM inserted
UNION ALL
SELECT j.id, true AS duplicate, j.created_at, j.run_at
FROM pgqueue.jobs j
WHERE j.idempotency_key = $10
  AND j.state IN ('queued', 'running', 'succeeded')
  AND NOT EXISTS (SELECT FROM inserted);

-- name: reserve_ids
-- Ids for a bulk enqueue, taken before the insert so each input row knows its id; one
-- array rather than a row per id, which is cheaper to send and to decode.
SELECT array_agg(nextval('pgqueue.jobs_id_seq')) FROM generate_series(1, $1::integer);

-- name: enqueue_many
-- params: ids, queue, task, args_json, priority, max_attempts, run_at, delay, timeout, concurrency_key, idempotency_key, trace_context
-- Many jobs in one statement; rows whose key is held are skipped and not returned.
INSERT INTO pgqueue.jobs (id, queue, task, args, priority, max_attempts, run_at, timeout, concurrency_key,
                          idempotency_key, trace_context)
SELECT u.id, u.queue, u.task, u.args::jsonb, u.priority, u.max_attempts,
       COALESCE(u.run_at, now() + make_interval(secs => u.delay)),
       make_interval(secs => u.timeout), u.concurrency_key, u.idempotency_key,
       u.trace_context::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::integer[],
            $7::timestamptz[], $8::float8[], $9::float8[], $10::text[], $11::text[], $12::text[])
     AS u(id, queue, task, args, priority, max_attempts, run_at, delay, timeout, concurrency_key,
          idempotency_key, trace_context)
ON CONFLICT (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND state IN ('queued', 'running', 'succeeded')
    DO NOTHING
RETURNING id;

-- name: copy_jobs
-- params: id, task, args_json, queue, priority, max_attempts, trace_context
-- The bulk fast path, for batches with no keys, run_at, delay or timeout (ids from reserve_ids;
-- every other column takes its default). COPY fires the statement trigger like INSERT.
-- trace_context goes too: an instrumented bulk enqueue gives every job the same one, and
-- must keep this path.
COPY pgqueue.jobs (id, task, args, queue, priority, max_attempts, trace_context) FROM STDIN;

-- name: find_by_idempotency_keys
SELECT idempotency_key, id
FROM pgqueue.jobs
WHERE idempotency_key = ANY($1::text[])
  AND state IN ('queued', 'running', 'succeeded');

-- name: claim_jobs
-- $2 jobs of queues $1 for worker $3, from cursors $4-$6 (pgqueue/claim_cursor.py).
WITH candidates AS (
    SELECT c.id, c.priority, c.run_at, c.turn
    FROM (SELECT u.name, u.priority, u.run_at, u.id
          FROM unnest($1::text[], $4::smallint[], $5::timestamptz[], $6::bigint[])
               AS u(name, priority, run_at, id)
          WHERE NOT EXISTS (SELECT FROM pgqueue.queues p WHERE p.name = u.name AND p.paused)
            AND NOT EXISTS (SELECT FROM pgqueue.queue_limits l WHERE l.queue = u.name)) AS q
    CROSS JOIN LATERAL (
        SELECT x.id, x.priority, x.run_at, row_number() OVER () AS turn
        FROM (
            SELECT * FROM (
                SELECT j.id, j.priority, j.run_at FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = q.name AND j.priority > q.priority
                  AND j.run_at <= now()
                ORDER BY j.priority DESC, j.run_at, j.id LIMIT $2
                FOR UPDATE SKIP LOCKED) AS higher
            UNION ALL
            SELECT * FROM (
                SELECT j.id, j.priority, j.run_at FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = q.name AND j.priority = q.priority
                  AND (j.run_at, j.id) > (q.run_at, q.id) AND j.run_at <= now()
                ORDER BY j.priority DESC, j.run_at, j.id LIMIT $2
                FOR UPDATE SKIP LOCKED) AS same
            UNION ALL
            SELECT * FROM (
                SELECT j.id, j.priority, j.run_at FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = q.name AND j.priority < q.priority
                  AND j.run_at <= now()
                ORDER BY j.priority DESC, j.run_at, j.id LIMIT $2
                FOR UPDATE SKIP LOCKED) AS lower
            LIMIT $2
        ) AS x
    ) AS c
    -- Paused queues are skipped; queues take turns (round robin by rank within each).
    -- (The header is kept to one line: pg_stat_activity shows a statement's first 1 kB,
    -- and tests look for its FOR UPDATE SKIP LOCKED there.)
    ORDER BY c.turn, c.priority DESC, c.run_at, c.id
    LIMIT $2
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = $3::uuid,
        progress = NULL
    -- An array, not a join: a generic plan cannot know how few candidates there are,
    -- and would hash the whole table to join them.
    WHERE j.id = ANY (ARRAY(SELECT c.id FROM candidates c))
    -- trace_context: read from the row the UPDATE has in hand anyway (NULL, and so
    -- nothing to send, for a job enqueued without one). run_at: for the cursor.
    RETURNING j.id, j.queue, j.task, j.args::text AS args, j.priority, j.attempts AS attempt,
              j.max_attempts, EXTRACT(EPOCH FROM j.timeout)::float8 AS timeout,
              j.trace_context::text AS trace_context, j.run_at
)
SELECT * FROM claimed
UNION ALL
-- Limited queues (pgqueue.queue_limits) are left to claim_jobs_limited (flow.sql): this
-- marker row (id NULL) says there are some.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
WHERE EXISTS (SELECT FROM pgqueue.queue_limits l WHERE l.queue = ANY ($1::text[]));

-- name: seconds_until_next_job
-- How long until the next queued job of these queues is due, by the database's clock
-- (an idle worker's alarm for delayed jobs, retries and rate limits); NULL when none
-- is known. For a limited queue, a job already due that the claim left is waiting for a
-- slot, so only its delayed jobs and its rate windows count (pgqueue.limited_queue_due).
-- Also whether any of the queues is limited: its worker then claims again whenever
-- one of its own jobs finishes.
WITH served AS (
    SELECT u.name, EXISTS (SELECT FROM pgqueue.queue_limits l WHERE l.queue = u.name) AS limited
    FROM unnest($1::text[]) AS u(name)
), due AS (
    SELECT min(j.run_at) AS at
    FROM pgqueue.jobs j
    WHERE j.state = 'queued' AND j.queue = ANY(ARRAY(SELECT name FROM served WHERE NOT limited))
    UNION ALL
    SELECT pgqueue.limited_queue_due(s.name) FROM served s WHERE s.limited
)
SELECT EXTRACT(EPOCH FROM min(at) - clock_timestamp())::float8 AS due_in,
       COALESCE((SELECT bool_or(limited) FROM served), false) AS limited
FROM due;

-- name: complete_succeeded
-- A batch of finished jobs: ids, their results (JSON text, NULL for None) and the
-- attempt each ran as. The attempt guards the write: a job rescued from this worker and
-- claimed again has moved on to a later attempt, and this stale outcome is dropped.
-- Long-polling clients are told which jobs finished (see pgqueue_finished below).
WITH done AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'succeeded', result = d.result::jsonb, finished_at = now()
    FROM unnest($1::bigint[], $2::text[], $3::integer[]) AS d(id, result, attempt)
    -- The state compared as text matches no partial index's predicate: the planner
    -- cannot hash a scan of the running jobs' partial index, which holds an entry for
    -- every job that left running since the last vacuum (or while a long transaction
    -- holds the horizon). It looks each row up by primary key (a hash join on a seq
    -- scan only for a batch near the table's size). Never add "j.id = ANY ($1)": it
    -- drives the join from the table with the batch as the inner side of a nested
    -- loop, and a batch of n outcomes costs n x n comparisons (a 450,000-job batch
    -- ran for minutes and the batches behind it grew without end).
    WHERE j.id = d.id AND j.state::text = 'running' AND j.attempts = d.attempt
    RETURNING j.id
)
SELECT pgqueue.notify_finished(array_agg(id)) FROM done HAVING count(*) > 0;

-- name: complete_in_transaction
-- One job of a transactional task, marked succeeded inside the transaction that holds
-- the task's own writes. Guarded like complete_succeeded and also by the worker ($4):
-- no row back means the job was rescued or cancelled meanwhile, and the caller rolls
-- the whole transaction back, so the task's writes happen only with the job's success.
-- From here to COMMIT the job's row is locked: if the worker froze or lost its network
-- in between, the rescue (SKIP LOCKED) could never hand the job on. So the rest of the
-- transaction may sit idle at most $5 milliseconds (the worker's own lease, the one the
-- rescue judges it by); past that the server ends the session, the transaction rolls
-- back and the job is rescued as usual.
WITH done AS (
    -- clock_timestamp(): now() would be the start of the task's own transaction.
    UPDATE pgqueue.jobs
    SET state = 'succeeded', result = $3::jsonb, finished_at = clock_timestamp()
    WHERE id = $1 AND state = 'running' AND attempts = $2 AND worker_id = $4::uuid
    RETURNING id
)
SELECT id, pgqueue.notify_finished(ARRAY[id]),
       set_config('idle_in_transaction_session_timeout', $5::text, true)
FROM done;

-- name: complete_failed
-- A batch of failed attempts: each gets its error entry appended; retry_in NULL means
-- no retry (-> failed), otherwise the job is queued again that many seconds from now.
-- Guarded by the attempt like complete_succeeded.
WITH done AS (
    UPDATE pgqueue.jobs AS j
    SET state = CASE WHEN d.retry_in IS NULL THEN 'failed' ELSE 'queued' END::pgqueue.job_state,
        run_at = CASE WHEN d.retry_in IS NULL THEN j.run_at
                      ELSE now() + make_interval(secs => d.retry_in) END,
        errors = j.errors || jsonb_build_array(d.error::jsonb || jsonb_build_object('at', now())),
        finished_at = CASE WHEN d.retry_in IS NULL THEN now() END
    FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::integer[]) AS d(id, error, retry_in, attempt)
    -- State as text, as in complete_succeeded (and no "j.id = ANY ($1)", as there).
    WHERE j.id = d.id AND j.state::text = 'running' AND j.attempts = d.attempt
    RETURNING j.id, j.state
)
SELECT pgqueue.notify_finished(array_agg(id)) FROM done WHERE state = 'failed' HAVING count(*) > 0;

-- name: snooze_jobs
-- Tasks that asked to run again later (Snooze): queued again $2 seconds from now, and
-- the attempt given back, since asking to wait is not a failure. Attempt-guarded.
UPDATE pgqueue.jobs AS j
SET state = 'queued', run_at = now() + make_interval(secs => d.after),
    attempts = j.attempts - 1
FROM unnest($1::bigint[], $2::float8[], $3::integer[]) AS d(id, after, attempt)
-- State as text: see complete_succeeded.
WHERE j.id = d.id AND j.state::text = 'running' AND j.attempts = d.attempt;

-- name: cancel_job
SELECT pgqueue.cancel_job($1::bigint)::text;

-- name: cancelled_among
-- Which of a worker's running jobs were cancelled (the poll behind the cancel NOTIFY).
SELECT id FROM pgqueue.jobs WHERE id = ANY($1::bigint[]) AND state = 'cancelled';

-- name: retry_job
SELECT pgqueue.retry_job($1::bigint);

-- name: release_jobs
-- Hand claimed jobs that never started back to the queue, as if never claimed.
UPDATE pgqueue.jobs
SET state = 'queued', attempts = attempts - 1, started_at = NULL
WHERE id = ANY($1::bigint[]) AND state = 'running' AND worker_id = $2::uuid;

-- name: release_unknown_jobs
-- The jobs held by worker $1 other than those in $2 (the ones it runs or is reporting
-- on): claimed by a claim whose answer was lost with its connection. Back to the queue
-- as if never claimed.
UPDATE pgqueue.jobs
SET state = 'queued', attempts = attempts - 1, started_at = NULL
WHERE worker_id = $1::uuid AND state = 'running' AND id <> ALL($2::bigint[])
RETURNING id;

-- name: register_worker
-- With the worker's own lease ($6) and heartbeat interval ($7), in seconds: the rescue
-- judges this worker by them, whatever the rescuer's own.
INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, lease, heartbeat_interval)
VALUES ($1::uuid, $2, $3, $4::text[], $5,
        make_interval(secs => $6::float8), make_interval(secs => $7::float8));

-- name: heartbeat
-- One statement per worker per beat, whatever the number of jobs it holds. A NULL id
-- back means the worker was declared dead (its jobs rescued) and must register again.
-- With the server's timeline and how long claims still wait for it (note_timeline).
WITH beat AS (
    UPDATE pgqueue.workers SET last_heartbeat = now() WHERE id = $1::uuid RETURNING id
)
SELECT (SELECT id FROM beat) AS id, t.timeline, t.claims_held_for
FROM pgqueue.note_timeline() AS t;

-- name: note_timeline
-- At each new connection of a worker's pool, before its first claim there.
SELECT timeline, claims_held_for FROM pgqueue.note_timeline();

-- name: claims_lost_among
-- Which of the jobs worker $2 runs ($1) the database no longer shows as running under
-- it: after a failover, claims the new primary never received.
SELECT r.id
FROM unnest($1::bigint[]) AS r(id)
WHERE NOT EXISTS (
    SELECT FROM pgqueue.jobs j WHERE j.id = r.id AND j.state = 'running' AND j.worker_id = $2::uuid
);

-- name: live_workers
-- Workers whose last heartbeat is within their own lease (15 s for a row without one,
-- as the rescue judges it), by the database's clock: what pgqueue_workers_live counts.
SELECT count(*) AS live
FROM pgqueue.workers
WHERE last_heartbeat >= now() - COALESCE(lease, interval '15 seconds');

-- name: deregister_worker
DELETE FROM pgqueue.workers WHERE id = $1::uuid;

-- name: rescue_jobs
-- Drop the workers whose heartbeat is older than their own lease and hand their running
-- jobs back: queued again with an error entry saying the worker was lost (the attempt it
-- was on counts), or failed when that was the last attempt. A running job whose worker
-- row is missing altogether is rescued too. Workers are woken for the queues that got
-- jobs back. Returns one row per rescued job.
-- Each worker is judged by the lease it registered, never by the rescuer's ($1
-- seconds): a rescuer with a short lease would otherwise declare dead a live worker
-- that beats less often, and run its jobs again beside it. $1 serves only where no
-- lease was recorded: rows of workers from before 0008 (mid rolling deploy) and jobs
-- claimed before workers registered (0001). Those get the rescuer's lease but never
-- less than 15 s, the default lease of those releases: an old worker most likely runs
-- with it, so a short-lease rescuer cannot take the jobs of a live one (which beats
-- every 3 s), while a rescuer with a longer lease is no more eager than it was before.
-- An old worker whose lease was set longer than both cannot be told apart from a dead
-- one; change leases only once every worker records its own.
-- One live worker at a time does it: the one whose statement gets the advisory lock.
-- Lock and rescue are one statement, run outside any transaction block, so the lock
-- lives exactly as long as the statement: a rescuer frozen or cut off between round
-- trips cannot hold it and stop every other worker from rescuing.
WITH elected AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock($2::bigint) AS yes  -- pgqueue.locks.RESCUE
), fallback AS (
    -- The lease of a worker that recorded none (see above).
    SELECT GREATEST(make_interval(secs => $1::float8), interval '15 seconds') AS unrecorded
), expired AS (
    DELETE FROM pgqueue.workers
    WHERE (SELECT yes FROM elected)
      AND last_heartbeat < now() - COALESCE(lease, (SELECT unrecorded FROM fallback))
    RETURNING id
), orphaned AS (
    SELECT j.id
    FROM pgqueue.jobs j
    WHERE (SELECT yes FROM elected)
      AND j.state = 'running'
      AND (j.worker_id IN (SELECT id FROM expired)
           OR (j.worker_id IS NOT NULL
               AND NOT EXISTS (SELECT FROM pgqueue.workers w WHERE w.id = j.worker_id))
           -- claimed before workers registered (0001): give it one lease from its start
           OR (j.worker_id IS NULL AND j.started_at < now() - (SELECT unrecorded FROM fallback)))
    FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE pgqueue.jobs AS j
    SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END::pgqueue.job_state,
        run_at = now(),
        finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts,
            'type', 'pgqueue.WorkerLost',
            'message', 'the worker running this job stopped heartbeating (killed, frozen or cut off from the database)',
            'traceback', NULL,
            'worker_id', j.worker_id,
            'at', now()))
    FROM orphaned
    WHERE j.id = orphaned.id
    RETURNING j.id, j.queue, j.task, j.state
), counted AS (
    -- The rescue's own counter (pgqueue_jobs_rescued_total): the counters' triggers see
    -- a move from running back to queued or to failed and cannot tell it from a retry.
    INSERT INTO pgqueue.job_counter_deltas (queue, task, metric, minute, n)
    SELECT queue, task, 'rescued_total', NULL, count(*) FROM rescued GROUP BY 1, 2
), woken AS (
    SELECT pg_notify('pgqueue_enqueued', q.queue)
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'queued') AS q
), finished AS (
    SELECT pgqueue.notify_finished(array_agg(id)) FROM rescued WHERE state = 'failed'
    HAVING count(*) > 0
)
SELECT r.id, r.state::text, (SELECT count(*) FROM woken) AS queues_woken,
       (SELECT count(*) FROM finished) AS finished_notified
FROM rescued r;

-- name: get_job
SELECT id, queue, task, args::text AS args, state::text AS state, priority, attempts,
       max_attempts, run_at, idempotency_key, result::text AS result, errors::text AS errors,
       created_at, started_at, finished_at, EXTRACT(EPOCH FROM timeout)::float8 AS timeout,
       progress::text AS progress, concurrency_key, unique_key,
       EXTRACT(EPOCH FROM unique_for)::float8 AS unique_for,
       EXTRACT(EPOCH FROM debounce)::float8 AS debounce, sequence_key, sequence_on_failure,
       -- A dependant's parents in order (workflows.sql); NULL for a job without any.
       CASE WHEN parents_waiting IS NOT NULL THEN
           (SELECT array_agg(d.parent_id ORDER BY d.position)
            FROM pgqueue.job_dependencies d WHERE d.job_id = jobs.id) END AS depends_on,
       on_parent_failure, parent_results_arg, trace_context::text AS trace_context
FROM pgqueue.jobs
WHERE id = $1;

-- name: set_progress
-- A running attempt's progress report; no row back when the attempt is no longer running.
UPDATE pgqueue.jobs SET progress = $2::jsonb
WHERE id = $1 AND state = 'running' AND attempts = $3
RETURNING id;

-- name: pause_queue
SELECT pgqueue.pause_queue($1);

-- name: resume_queue
SELECT pgqueue.resume_queue($1);

-- name: queue_stats
SELECT queue, queued, claimable, running, succeeded, failed, cancelled,
       EXTRACT(EPOCH FROM oldest_claimable_age)::float8 AS oldest_claimable_age, paused
FROM pgqueue.queue_stats
ORDER BY queue;

-- name: list_jobs
-- Newest first, one page: jobs with an id below $1 (the cursor; NULL for the first
-- page), filtered by queue, state and task where given, at most $5.
SELECT id, queue, task, args::text AS args, state::text AS state, priority, attempts,
       max_attempts, run_at, idempotency_key, result::text AS result, errors::text AS errors,
       created_at, started_at, finished_at, EXTRACT(EPOCH FROM timeout)::float8 AS timeout,
       progress::text AS progress, concurrency_key, unique_key,
       EXTRACT(EPOCH FROM unique_for)::float8 AS unique_for,
       EXTRACT(EPOCH FROM debounce)::float8 AS debounce, sequence_key, sequence_on_failure,
       -- A dependant's parents in order (workflows.sql); NULL for a job without any.
       CASE WHEN parents_waiting IS NOT NULL THEN
           (SELECT array_agg(d.parent_id ORDER BY d.position)
            FROM pgqueue.job_dependencies d WHERE d.job_id = jobs.id) END AS depends_on,
       on_parent_failure, parent_results_arg, trace_context::text AS trace_context
FROM pgqueue.jobs
WHERE ($1::bigint IS NULL OR id < $1)
  AND ($2::text IS NULL OR queue = $2)
  AND ($3::pgqueue.job_state IS NULL OR state = $3)
  AND ($4::text IS NULL OR task = $4)
ORDER BY id DESC
LIMIT $5;

-- name: create_api_key
INSERT INTO pgqueue.api_keys (name, scope, key_hash) VALUES ($1, $2, $3) RETURNING id;

-- name: find_api_key
-- The live key with this hash, marked as used (at most once a minute, to spare writes).
WITH found AS (
    SELECT id, name, scope, last_used_at FROM pgqueue.api_keys
    WHERE key_hash = $1 AND revoked_at IS NULL
), touched AS (
    UPDATE pgqueue.api_keys k SET last_used_at = now()
    FROM found f
    WHERE k.id = f.id AND (f.last_used_at IS NULL OR f.last_used_at < now() - interval '1 minute')
)
SELECT id, name, scope FROM found;

-- name: list_api_keys
SELECT id, name, scope, created_at, last_used_at, revoked_at FROM pgqueue.api_keys ORDER BY id;

-- name: revoke_api_key
UPDATE pgqueue.api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id;

-- dashboard

-- dashboard_throughput: in counters.sql.

-- metrics

-- metrics_jobs: in counters.sql.

-- name: metrics_queues
-- Queues with settings of their own (a small table): paused or not, and listed even
-- when they hold no job.
SELECT name, paused FROM pgqueue.queues;

-- name: prune_jobs
-- One batch of pruning: finished jobs older than their state's retention ($1 succeeded,
-- $2 failed, $3 cancelled, in seconds; NULL keeps forever), at most $4 of them, of the
-- queues in $5 (NULL: every queue). Returns how many went.
SELECT pgqueue.prune_jobs(
    make_interval(secs => $1::float8),
    make_interval(secs => $2::float8),
    make_interval(secs => $3::float8),
    $4::integer,
    $5::text[]);

-- name: prune_jobs_elected
-- The same batch, by one worker at a time: the one whose statement gets this advisory
-- lock (not the rescue's, so that pruning never holds up a rescue). Lock and batch are
-- one statement, so the lock lasts no longer than the batch. NULL when another worker
-- is pruning. A worker passes the queues it serves as $5: its retention is its own
-- setting, never applied to queues that other workers serve.
SELECT CASE WHEN pg_try_advisory_xact_lock($6::bigint) THEN  -- pgqueue.locks.PRUNE
    pgqueue.prune_jobs(
        make_interval(secs => $1::float8),
        make_interval(secs => $2::float8),
        make_interval(secs => $3::float8),
        $4::integer,
        $5::text[])
END;

-- name: autovacuum_settings
-- Whether VACUUM cleans pgqueue.jobs by itself: the server's autovacuum setting and the
-- table's own autovacuum_enabled (a worker warns at start when either is off).
SELECT current_setting('autovacuum')::boolean AS server,
       COALESCE((SELECT o.option_value::boolean
                 FROM pg_options_to_table(c.reloptions) AS o
                 WHERE o.option_name = 'autovacuum_enabled'), true) AS jobs_table
FROM pg_class c
WHERE c.oid = 'pgqueue.jobs'::regclass;
