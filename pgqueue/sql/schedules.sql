-- Periodic schedules (pgqueue.scheduling): their management and the scheduler's rounds.
-- Intervals travel as whole microseconds (bigint), so that every worker reads the same
-- ticks; JSON as text, as in queries.sql.

-- name: set_schedule
-- Add or change a schedule (see pgqueue.set_schedule); $4: every, in microseconds.
SELECT pgqueue.set_schedule(
    schedule_name => $1, task => $2, cron => $3::text,
    every => $4::bigint * interval '1 microsecond', args => $5::jsonb, queue => $6,
    priority => $7::smallint, max_attempts => $8::integer, timezone => $9,
    catch_up => $10::boolean, timeout => make_interval(secs => $11::float8), source => $12);

-- name: pause_schedule
SELECT pgqueue.pause_schedule($1);

-- name: resume_schedule
SELECT pgqueue.resume_schedule($1);

-- name: remove_schedule
SELECT pgqueue.remove_schedule($1);

-- name: trigger_schedule
SELECT pgqueue.trigger_schedule($1);

-- name: list_schedules
-- Every schedule, or the one named $1, by name.
SELECT name, task, queue, cron,
       (EXTRACT(EPOCH FROM every) * 1000000)::bigint AS every_us, timezone, catch_up,
       paused, source, next_run_at, last_tick, last_enqueued_at, last_manual, last_job_id,
       last_job_state::text AS last_job_state, args::text AS args, priority, max_attempts,
       EXTRACT(EPOCH FROM timeout)::float8 AS timeout, created_at, updated_at
FROM pgqueue.schedule_status
WHERE $1::text IS NULL OR name = $1
ORDER BY name;

-- name: scheduler_schedules
-- What a scheduler round reads: every schedule not paused, and the database's clock,
-- by which every worker judges which ticks are due (one row with a NULL name when
-- there is no schedule).
SELECT s.name, s.cron, (EXTRACT(EPOCH FROM s.every) * 1000000)::bigint AS every_us,
       s.timezone, s.catch_up, s.next_run_at, c.db_now
FROM (SELECT now() AS db_now) AS c
LEFT JOIN pgqueue.schedules s ON NOT s.paused;

-- name: scheduler_advance
-- One schedule's share of a round, in one statement: move its next tick from $2 (as
-- the round read it) to $9, and give each tick in $7 its job, run at the matching
-- $8 (NULL: now). The move is made only while the schedule is as read (not paused, the
-- same rule, time zone and catch_up, the same next tick: NULL matches NULL): of several
-- workers planning from one reading, the first moves it and the others change nothing.
-- A tick's job is inserted only when its row in schedule_ticks was (ON CONFLICT DO
-- NOTHING on the primary key (schedule, tick)): one job per tick, whoever runs this.
-- Ledger rows older than an hour go, but for the newest, which is the last run.
-- Returns one row per job enqueued.
WITH advanced AS (
    UPDATE pgqueue.schedules AS s
    SET next_run_at = $9::timestamptz
    WHERE s.name = $1
      AND s.next_run_at IS NOT DISTINCT FROM $2::timestamptz
      AND NOT s.paused
      AND s.cron IS NOT DISTINCT FROM $3::text
      AND s.every IS NOT DISTINCT FROM $4::bigint * interval '1 microsecond'
      AND s.timezone = $5
      AND s.catch_up = $6::boolean
    RETURNING s.name, s.task, s.args, s.queue, s.priority, s.max_attempts, s.timeout
), planned AS MATERIALIZED (
    -- Ids drawn before the ledger insert, so that each tick's row names its job.
    SELECT p.tick, p.run_at, nextval('pgqueue.jobs_id_seq') AS job_id
    FROM advanced, unnest($7::timestamptz[], $8::timestamptz[]) AS p(tick, run_at)
), ledger AS (
    INSERT INTO pgqueue.schedule_ticks (schedule, tick, job_id)
    SELECT $1, p.tick, p.job_id FROM planned p
    ON CONFLICT (schedule, tick) DO NOTHING
    RETURNING tick, job_id
), jobs AS (
    INSERT INTO pgqueue.jobs (id, queue, task, args, priority, max_attempts, run_at, timeout)
    SELECT l.job_id, a.queue, a.task, a.args, a.priority, a.max_attempts,
           COALESCE(p.run_at, now()), a.timeout
    FROM ledger l JOIN planned p ON p.tick = l.tick CROSS JOIN advanced a
    RETURNING id
), pruned AS (
    DELETE FROM pgqueue.schedule_ticks t
    WHERE t.schedule = $1
      AND EXISTS (SELECT FROM advanced)
      AND t.enqueued_at < now() - interval '1 hour'
      AND t.tick < (SELECT max(tick) FROM pgqueue.schedule_ticks WHERE schedule = $1)
)
SELECT l.tick, l.job_id FROM ledger l JOIN jobs j ON j.id = l.job_id
UNION ALL
-- Whether the move was made at all, as a row with no tick.
SELECT NULL, NULL FROM advanced;
