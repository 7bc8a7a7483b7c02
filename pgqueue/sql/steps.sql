-- Durable steps (pgqueue.steps): a job's finished steps, in pgqueue.job_steps.

-- name: load_steps
-- The steps a job has finished: what a step's later attempts return instead of
-- running it again. Read once per attempt, at its first step.
SELECT name, result::text AS result
FROM pgqueue.job_steps
WHERE job_id = $1;

-- name: record_step
-- A step's result, written only while attempt $2 holds the job (running, and its
-- latest attempt): `owned` false means it was rescued or cancelled meanwhile, and
-- nothing was written. Run on the worker's own connection (committed at once), or in
-- a transactional task's transaction (committed with its writes, or rolled back with
-- them). A step of that name recorded already (the same step run twice at once by one
-- attempt) is kept: `stored` is the result that holds, the one written first.
-- clock_timestamp(): in a task's transaction, now() would be the transaction's start.
WITH owner AS (
    SELECT id FROM pgqueue.jobs WHERE id = $1 AND state = 'running' AND attempts = $2
), written AS (
    INSERT INTO pgqueue.job_steps (job_id, name, result, attempt, finished_at)
    SELECT id, $3, $4::jsonb, $2, clock_timestamp() FROM owner
    ON CONFLICT (job_id, name) DO NOTHING
    RETURNING result
)
SELECT EXISTS (SELECT FROM owner) AS owned,
       COALESCE((SELECT result::text FROM written),
                (SELECT s.result::text FROM pgqueue.job_steps s
                 WHERE s.job_id = $1 AND s.name = $3)) AS stored;

-- name: job_steps
-- A job's finished steps, in the order they finished (pgqueue.Queue.job_steps).
SELECT name, result::text AS result, attempt, finished_at
FROM pgqueue.job_steps
WHERE job_id = $1
ORDER BY finished_at, name;
