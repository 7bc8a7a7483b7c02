"""Periodic schedules: pgqueue.schedules (a cron expression in a time zone, or a fixed
interval, per schedule), pgqueue.schedule_ticks (one row per tick enqueued: its primary
key makes it one job per tick however many workers run the scheduler), the functions
pgqueue.set_schedule, pause_schedule, resume_schedule, remove_schedule and
trigger_schedule, and the view pgqueue.schedule_status (next and last runs).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
-- Periodic schedules (0010). A schedule enqueues a job of its task at each of its
-- ticks: the instants its cron expression names in its time zone, or every multiple
-- of its interval since the Unix epoch (pgqueue/scheduling/ticks.py). Every worker's
-- scheduler reads this table and enqueues the ticks that are due; there is no leader.
-- next_run_at is the first tick not yet handled; NULL until a scheduler has worked it
-- out (a schedule added from psql, or resumed), which the next round does.
CREATE TABLE pgqueue.schedules (
    name         text PRIMARY KEY,
    task         text NOT NULL,
    args         jsonb NOT NULL DEFAULT '{}'::jsonb,
    queue        text NOT NULL DEFAULT 'default',
    priority     smallint NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    timeout      interval,
    cron         text,
    every        interval,
    timezone     text NOT NULL DEFAULT 'UTC',
    catch_up     boolean NOT NULL DEFAULT false,
    paused       boolean NOT NULL DEFAULT false,
    source       text NOT NULL DEFAULT 'runtime',
    next_run_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_name_check CHECK (length(name) <= 200 AND name ~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$'),
    CONSTRAINT schedules_task_name_check CHECK (length(task) <= 200 AND task ~ '^[A-Za-z_][A-Za-z0-9_.:-]*$'),
    CONSTRAINT schedules_queue_name_check CHECK (length(queue) <= 64 AND queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$'),
    CONSTRAINT schedules_args_object_check CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT schedules_max_attempts_check CHECK (max_attempts BETWEEN 1 AND 1000),
    CONSTRAINT schedules_timeout_check
        CHECK (timeout > interval '0' AND timeout <= interval '3153600000 seconds'),
    -- Exactly one rule: a cron expression or a fixed interval.
    CONSTRAINT schedules_rule_check CHECK ((cron IS NULL) <> (every IS NULL)),
    CONSTRAINT schedules_cron_check CHECK (length(cron) BETWEEN 1 AND 200),
    CONSTRAINT schedules_every_check
        CHECK (every BETWEEN interval '1 second' AND interval '3153600000 seconds'),
    CONSTRAINT schedules_timezone_check CHECK (length(timezone) BETWEEN 1 AND 64),
    CONSTRAINT schedules_source_check CHECK (source IN ('code', 'runtime'))
);

COMMENT ON TABLE pgqueue.schedules IS
    'Periodic schedules: a job of the task at each tick (cron in timezone, or every interval).';
COMMENT ON COLUMN pgqueue.schedules.catch_up IS
    'Ticks missed while no worker ran (older than the grace when first seen): true enqueues one job for them all, false skips them.';
COMMENT ON COLUMN pgqueue.schedules.source IS
    'code: declared with @queue.periodic and written again by every starting worker (a pause is kept); runtime: added by a call, SQL or the HTTP API.';
COMMENT ON COLUMN pgqueue.schedules.next_run_at IS
    'The first tick not yet handled; NULL: the next scheduler round works it out from now.';

-- One row per tick enqueued: the primary key is what makes it one job per tick, however
-- many workers' schedulers see the tick due at once (the tick and its job are written
-- by one statement, the job only when the tick's row was). Manual triggers are rows too
-- (manual, at the time of the trigger). Old rows are pruned by the statement that
-- enqueues the next ticks; the newest stays, as the schedule's last run.
CREATE TABLE pgqueue.schedule_ticks (
    schedule    text NOT NULL,
    tick        timestamptz NOT NULL,
    job_id      bigint NOT NULL,
    manual      boolean NOT NULL DEFAULT false,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedule_ticks_pkey PRIMARY KEY (schedule, tick),
    CONSTRAINT schedule_ticks_schedule_fkey FOREIGN KEY (schedule)
        REFERENCES pgqueue.schedules (name) ON DELETE CASCADE
);

COMMENT ON TABLE pgqueue.schedule_ticks IS
    'The ticks of each schedule that got their job: one row per (schedule, tick), never two.';

-- Add a schedule, or change the one with this name (its pause is kept; a new rule or
-- time zone makes the next tick be worked out again from now). The cron expression is
-- checked by the workers, which log schedule_invalid for one they cannot read; pgqueue's
-- own calls check it before writing.
CREATE FUNCTION pgqueue.set_schedule(
    schedule_name text,
    task text,
    cron text DEFAULT NULL,
    every interval DEFAULT NULL,
    args jsonb DEFAULT '{}'::jsonb,
    queue text DEFAULT 'default',
    priority smallint DEFAULT 0,
    max_attempts integer DEFAULT 3,
    timezone text DEFAULT 'UTC',
    catch_up boolean DEFAULT false,
    timeout interval DEFAULT NULL,
    source text DEFAULT 'runtime'
) RETURNS void
LANGUAGE sql AS $$
    -- Refuses a time zone PostgreSQL does not know (invalid_parameter_value).
    SELECT now() AT TIME ZONE set_schedule.timezone;
    INSERT INTO pgqueue.schedules AS s
        (name, task, args, queue, priority, max_attempts, timeout, cron, every, timezone,
         catch_up, source)
    VALUES (schedule_name, task, args, queue, priority, max_attempts, timeout, cron, every,
            timezone, catch_up, source)
    ON CONFLICT (name) DO UPDATE SET
        task = EXCLUDED.task, args = EXCLUDED.args, queue = EXCLUDED.queue,
        priority = EXCLUDED.priority, max_attempts = EXCLUDED.max_attempts,
        timeout = EXCLUDED.timeout, cron = EXCLUDED.cron, every = EXCLUDED.every,
        timezone = EXCLUDED.timezone, catch_up = EXCLUDED.catch_up, source = EXCLUDED.source,
        next_run_at = CASE
            WHEN (s.cron, s.every, s.timezone)
                 IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
            THEN s.next_run_at END,
        updated_at = now();
$$;

-- Pause a schedule: no job for its ticks until it is resumed (the ticks in between are
-- skipped, whatever catch_up says). An unknown name raises no_data_found.
CREATE FUNCTION pgqueue.pause_schedule(schedule_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgqueue.schedules SET paused = true, updated_at = now() WHERE name = schedule_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: there is no schedule %', schedule_name
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Resume a paused schedule from its next tick after now.
CREATE FUNCTION pgqueue.resume_schedule(schedule_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgqueue.schedules
    SET paused = false, updated_at = now(),
        next_run_at = CASE WHEN paused THEN NULL ELSE next_run_at END
    WHERE name = schedule_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: there is no schedule %', schedule_name
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Remove a schedule and its ticks (its jobs stay); whether there was one. A schedule
-- declared in code comes back when a worker of that code starts: pause it instead.
CREATE FUNCTION pgqueue.remove_schedule(schedule_name text) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM pgqueue.schedules WHERE name = schedule_name RETURNING 1)
    SELECT count(*) > 0 FROM gone;
$$;

-- Enqueue a job of the schedule now, paused or not, beside its ticks (which it does not
-- move); returns the job's id. An unknown name raises no_data_found.
CREATE FUNCTION pgqueue.trigger_schedule(schedule_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    WITH job AS (
        INSERT INTO pgqueue.jobs (queue, task, args, priority, max_attempts, timeout)
        SELECT s.queue, s.task, s.args, s.priority, s.max_attempts, s.timeout
        FROM pgqueue.schedules s WHERE s.name = schedule_name
        RETURNING id
    ), ledger AS (
        INSERT INTO pgqueue.schedule_ticks (schedule, tick, job_id, manual)
        SELECT schedule_name, clock_timestamp(), job.id, true FROM job
    )
    SELECT id INTO new_id FROM job;
    IF new_id IS NULL THEN
        RAISE EXCEPTION 'pgqueue: there is no schedule %', schedule_name
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN new_id;
END
$$;

-- Every schedule with its next tick and its last run: the last row of its ticks (the
-- tick, when its job was enqueued, whether by hand, and that job's state now; NULL
-- once the job was pruned).
CREATE VIEW pgqueue.schedule_status AS
SELECT s.name, s.task, s.queue, s.cron, s.every, s.timezone, s.catch_up, s.paused,
       s.source, s.next_run_at, l.tick AS last_tick, l.enqueued_at AS last_enqueued_at,
       l.manual AS last_manual, l.job_id AS last_job_id, j.state AS last_job_state,
       s.args, s.priority, s.max_attempts, s.timeout, s.created_at, s.updated_at
FROM pgqueue.schedules s
LEFT JOIN LATERAL (
    SELECT t.tick, t.enqueued_at, t.manual, t.job_id
    FROM pgqueue.schedule_ticks t
    WHERE t.schedule = s.name
    ORDER BY t.enqueued_at DESC, t.tick DESC
    LIMIT 1
) AS l ON true
LEFT JOIN pgqueue.jobs j ON j.id = l.job_id;
"""

DOWNGRADE_SQL = """
DROP VIEW pgqueue.schedule_status;
DROP FUNCTION pgqueue.trigger_schedule(text);
DROP FUNCTION pgqueue.remove_schedule(text);
DROP FUNCTION pgqueue.resume_schedule(text);
DROP FUNCTION pgqueue.pause_schedule(text);
DROP FUNCTION pgqueue.set_schedule(
    text, text, text, interval, jsonb, text, smallint, integer, text, boolean, interval, text);
DROP TABLE pgqueue.schedule_ticks;
DROP TABLE pgqueue.schedules;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
