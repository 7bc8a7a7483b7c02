"""Unique windows, debounce and sequences: a job's ``unique_key`` with ``unique_for``
(the ``pgqueue.unique_windows`` table) or ``debounce`` (a partial unique index on
pending jobs); a job's ``sequence_key`` (the ``blocked`` state, the
``pgqueue.sequences`` table and triggers on jobs). See the sections "Unique windows and
debounce" and "Sequences" of pgqueue/sql/schema.sql.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# The window table and its trigger, as in schema.sql (a function's text is dumped as
# written: it must match character for character).
WINDOWS_SQL = r"""
CREATE TABLE pgqueue.unique_windows (
    unique_key text PRIMARY KEY,
    job_id     bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT unique_windows_key_check CHECK (length(unique_key) BETWEEN 1 AND 255)
);

COMMENT ON TABLE pgqueue.unique_windows IS
    'Unique windows: the job holding each unique_key until expires_at (see jobs.unique_for).';

CREATE FUNCTION pgqueue.close_unique_window() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgqueue.unique_windows WHERE unique_key = OLD.unique_key AND job_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_close_unique_window
    AFTER DELETE ON pgqueue.jobs
    FOR EACH ROW WHEN (OLD.unique_for IS NOT NULL)
    EXECUTE FUNCTION pgqueue.close_unique_window();
"""


# The sequences' table, functions and triggers, and the two functions they change, as
# in schema.sql.
SEQUENCES_SQL = r"""
COMMENT ON COLUMN pgqueue.jobs.sequence_key IS
    'Jobs sharing this key run one at a time, in enqueue order.';
COMMENT ON COLUMN pgqueue.jobs.sequence_on_failure IS
    'hold: failing for good holds the rest of the sequence; continue: lets them go on.';

-- The next job of a sequence, found when the one ahead finishes (its state is in the
-- key, as 'blocked' cannot be named in a predicate by the migration that adds it).
CREATE INDEX jobs_sequence_idx ON pgqueue.jobs (sequence_key, state, id)
    WHERE sequence_key IS NOT NULL;

-- One row per sequence with unfinished jobs: how many (blocked, queued, running, or
-- failed and holding the rest). Its row lock orders the enqueues and finishes of a
-- sequence; the row goes when the count reaches zero.
CREATE TABLE pgqueue.sequences (
    sequence_key text PRIMARY KEY,
    unfinished   bigint NOT NULL,
    CONSTRAINT sequences_unfinished_check CHECK (unfinished >= 0)
);

COMMENT ON TABLE pgqueue.sequences IS
    'Sequences with unfinished jobs, and how many (see jobs.sequence_key).';

-- Whether a job in this state counts among its sequence's unfinished jobs.
CREATE FUNCTION pgqueue.sequence_unfinished(state pgqueue.job_state, on_failure text)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN state::text IN ('blocked', 'queued', 'running')
        OR (state::text = 'failed' AND on_failure = 'hold');
END
$$;

-- A finished job of a sequence queued again (a manual retry): one more unfinished job,
-- which waits blocked when another is ahead of it (it runs next, being the oldest).
CREATE FUNCTION pgqueue.sequence_job_reopened() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unfinished_now bigint;
BEGIN
    IF pgqueue.sequence_unfinished(OLD.state, OLD.sequence_on_failure)
       OR NOT pgqueue.sequence_unfinished(NEW.state, NEW.sequence_on_failure) THEN
        RETURN NEW;
    END IF;
    INSERT INTO pgqueue.sequences AS s (sequence_key, unfinished) VALUES (NEW.sequence_key, 1)
    ON CONFLICT (sequence_key) DO UPDATE SET unfinished = s.unfinished + 1
    RETURNING s.unfinished INTO unfinished_now;
    IF unfinished_now > 1 THEN
        NEW.state := 'blocked';
    END IF;
    RETURN NEW;
END
$$;

-- A job of a sequence finished (or deleted unfinished): one fewer unfinished job, and
-- when it was the one running (or holding the rest), the oldest blocked job is queued.
-- The UPDATE of the sequence's row waits for an enqueue of the sequence in progress to
-- commit; the next statement of this function takes a new snapshot (READ COMMITTED),
-- which sees the job that enqueue wrote.
CREATE FUNCTION pgqueue.sequence_job_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unfinished_now bigint;
    next_queue text;
BEGIN
    IF NOT pgqueue.sequence_unfinished(OLD.state, OLD.sequence_on_failure) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF pgqueue.sequence_unfinished(NEW.state, NEW.sequence_on_failure) THEN
            RETURN NULL;
        END IF;
    END IF;
    -- The WHERE names the key alone: a condition on the count would be judged on this
    -- statement's snapshot, and skip the row instead of waiting for its latest count.
    UPDATE pgqueue.sequences SET unfinished = unfinished - 1
    WHERE sequence_key = OLD.sequence_key
    RETURNING unfinished INTO unfinished_now;
    IF unfinished_now = 0 THEN
        DELETE FROM pgqueue.sequences WHERE sequence_key = OLD.sequence_key;
    ELSIF OLD.state::text <> 'blocked' THEN
        UPDATE pgqueue.jobs SET state = 'queued'
        WHERE id = (SELECT j.id FROM pgqueue.jobs j
                    WHERE j.sequence_key = OLD.sequence_key AND j.state = 'blocked'
                    ORDER BY j.id LIMIT 1)
        RETURNING queue INTO next_queue;
        IF next_queue IS NOT NULL THEN
            PERFORM pg_notify('pgqueue_enqueued', next_queue);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Named to fire after jobs_guard_state_transition (BEFORE triggers fire by name), which
-- checks the move asked for; this one may then turn a retry into a wait.
CREATE TRIGGER jobs_sequence_reopened
    BEFORE UPDATE OF state ON pgqueue.jobs
    FOR EACH ROW WHEN (OLD.sequence_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION pgqueue.sequence_job_reopened();

CREATE TRIGGER jobs_sequence_finished
    AFTER UPDATE OF state ON pgqueue.jobs
    FOR EACH ROW WHEN (OLD.sequence_key IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION pgqueue.sequence_job_finished();

CREATE TRIGGER jobs_sequence_deleted
    AFTER DELETE ON pgqueue.jobs
    FOR EACH ROW WHEN (OLD.sequence_key IS NOT NULL)
    EXECUTE FUNCTION pgqueue.sequence_job_finished();

-- The state machine with 'blocked' (pgqueue.states.ALLOWED_TRANSITIONS).
CREATE OR REPLACE FUNCTION pgqueue.guard_state_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.state, NEW.state) NOT IN (
        ('queued', 'running'), ('queued', 'cancelled'),
        ('running', 'succeeded'), ('running', 'failed'), ('running', 'queued'), ('running', 'cancelled'),
        ('failed', 'queued'), ('cancelled', 'queued'),
        ('blocked', 'queued'), ('blocked', 'cancelled'), ('failed', 'blocked'), ('cancelled', 'blocked')
    ) THEN
        RAISE EXCEPTION 'pgqueue: job % cannot move from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- cancel_job as above, a blocked job too. A blocked job's sequence row is locked before
-- the job, in the order a finishing job takes them (its own row, the sequence's, then
-- the next job's), so that a cancel and a finish of one sequence never deadlock.
CREATE OR REPLACE FUNCTION pgqueue.cancel_job(job_id bigint) RETURNS pgqueue.job_state
LANGUAGE plpgsql AS $$
DECLARE
    old_state pgqueue.job_state;
    job_sequence text;
BEGIN
    SELECT state, sequence_key INTO old_state, job_sequence FROM pgqueue.jobs WHERE id = job_id;
    IF old_state::text = 'blocked' THEN
        PERFORM FROM pgqueue.sequences WHERE sequence_key = job_sequence FOR UPDATE;
    END IF;
    SELECT state INTO old_state FROM pgqueue.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: there is no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF old_state::text NOT IN ('queued', 'running', 'blocked') THEN
        RAISE EXCEPTION 'pgqueue: job % is % and cannot be cancelled', job_id, old_state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE pgqueue.jobs SET state = 'cancelled', finished_at = now() WHERE id = job_id;
    IF old_state = 'running' THEN
        PERFORM pg_notify('pgqueue_cancel', job_id::text);
    END IF;
    PERFORM pgqueue.notify_finished(ARRAY[job_id]);
    RETURN old_state;
END
$$;
-- Every sequence with unfinished jobs: how many, and the job at its head (queued,
-- running, or failed and holding the rest).
CREATE VIEW pgqueue.sequence_status AS
SELECT s.sequence_key,
       s.unfinished,
       h.id AS head_job_id,
       h.state AS head_state,
       h.queue AS head_queue
FROM pgqueue.sequences s
LEFT JOIN LATERAL (
    SELECT j.id, j.state, j.queue
    FROM pgqueue.jobs j
    WHERE j.sequence_key = s.sequence_key
      AND j.state::text <> 'blocked'
      AND pgqueue.sequence_unfinished(j.state, j.sequence_on_failure)
    ORDER BY j.id
    LIMIT 1
) AS h ON true;
"""

# What downgrade() puts back: the functions as 0012 left them.
OLD_FUNCTIONS_SQL = r"""
CREATE OR REPLACE FUNCTION pgqueue.guard_state_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.state, NEW.state) NOT IN (
        ('queued', 'running'), ('queued', 'cancelled'),
        ('running', 'succeeded'), ('running', 'failed'), ('running', 'queued'), ('running', 'cancelled'),
        ('failed', 'queued'), ('cancelled', 'queued')
    ) THEN
        RAISE EXCEPTION 'pgqueue: job % cannot move from % to %', OLD.id, OLD.state, NEW.state
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION pgqueue.cancel_job(job_id bigint) RETURNS pgqueue.job_state
LANGUAGE plpgsql AS $$
DECLARE
    old_state pgqueue.job_state;
BEGIN
    SELECT state INTO old_state FROM pgqueue.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: there is no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF old_state NOT IN ('queued', 'running') THEN
        RAISE EXCEPTION 'pgqueue: job % is % and cannot be cancelled', job_id, old_state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE pgqueue.jobs SET state = 'cancelled', finished_at = now() WHERE id = job_id;
    IF old_state = 'running' THEN
        PERFORM pg_notify('pgqueue_cancel', job_id::text);
    END IF;
    PERFORM pgqueue.notify_finished(ARRAY[job_id]);
    RETURN old_state;
END
$$;
"""


def upgrade() -> None:
    # PostgreSQL 12+ adds an enum value inside a transaction, but nothing may use it
    # before the transaction commits: below, 'blocked' appears only in plpgsql bodies
    # (read when first called) and in no index predicate or CHECK.
    op.execute("ALTER TYPE pgqueue.job_state ADD VALUE 'blocked'")
    # Nullable columns without defaults: no table rewrite. The CHECKs are added NOT VALID
    # and validated at once: every existing row is NULL in all three, which passes.
    op.execute(
        "ALTER TABLE pgqueue.jobs ADD COLUMN unique_key text, ADD COLUMN unique_for interval, "
        "ADD COLUMN debounce interval, ADD COLUMN sequence_key text, "
        "ADD COLUMN sequence_on_failure text"
    )
    checks = {
        "jobs_unique_key_check": "length(unique_key) BETWEEN 1 AND 255",
        "jobs_unique_for_check": (
            "unique_for > interval '0' AND unique_for <= interval '3153600000 seconds'"
        ),
        "jobs_debounce_check": (
            "debounce >= interval '0' AND debounce <= interval '3153600000 seconds'"
        ),
        "jobs_unique_mode_check": (
            "(unique_key IS NULL) = (unique_for IS NULL AND debounce IS NULL) "
            "AND (unique_for IS NULL OR debounce IS NULL) "
            "AND (unique_key IS NULL OR idempotency_key IS NULL)"
        ),
        "jobs_sequence_key_check": "length(sequence_key) BETWEEN 1 AND 255",
        "jobs_sequence_on_failure_check": (
            "(sequence_key IS NULL AND sequence_on_failure IS NULL) "
            "OR (sequence_key IS NOT NULL AND sequence_on_failure IN ('hold', 'continue'))"
        ),
    }
    for name, check in checks.items():
        op.execute(f"ALTER TABLE pgqueue.jobs ADD CONSTRAINT {name} CHECK ({check}) NOT VALID")
        op.execute(f"ALTER TABLE pgqueue.jobs VALIDATE CONSTRAINT {name}")
    op.execute(
        "COMMENT ON COLUMN pgqueue.jobs.unique_key IS "
        "'The key of this job''s unique window (unique_for) or debouncing (debounce).'"
    )
    op.execute(
        "COMMENT ON COLUMN pgqueue.jobs.unique_for IS "
        "'How long after this job was enqueued another enqueue of its unique_key returns it.'"
    )
    op.execute(
        "COMMENT ON COLUMN pgqueue.jobs.debounce IS "
        "'How far each enqueue of its unique_key pushes this job back while it is pending.'"
    )
    # Empty at creation (no job has debounce yet), but built by a scan of the table.
    op.execute(
        "CREATE UNIQUE INDEX jobs_debounce_pending_uniq ON pgqueue.jobs (unique_key) "
        "WHERE debounce IS NOT NULL AND state = 'queued' AND worker_id IS NULL"
    )
    op.execute(WINDOWS_SQL)
    op.execute(SEQUENCES_SQL)


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value: 'blocked' stays, unused. Blocked jobs are
    # queued (they will run without waiting for their turn).
    op.execute("UPDATE pgqueue.jobs SET state = 'queued' WHERE state = 'blocked'")
    op.execute("DROP VIEW pgqueue.sequence_status")
    op.execute("DROP TRIGGER jobs_sequence_reopened ON pgqueue.jobs")
    op.execute("DROP TRIGGER jobs_sequence_finished ON pgqueue.jobs")
    op.execute("DROP TRIGGER jobs_sequence_deleted ON pgqueue.jobs")
    op.execute("DROP FUNCTION pgqueue.sequence_job_reopened()")
    op.execute("DROP FUNCTION pgqueue.sequence_job_finished()")
    op.execute("DROP FUNCTION pgqueue.sequence_unfinished(pgqueue.job_state, text)")
    op.execute("DROP TABLE pgqueue.sequences")
    op.execute(OLD_FUNCTIONS_SQL)
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN sequence_on_failure, DROP COLUMN sequence_key")
    op.execute("DROP TRIGGER jobs_close_unique_window ON pgqueue.jobs")
    op.execute("DROP FUNCTION pgqueue.close_unique_window()")
    op.execute("DROP TABLE pgqueue.unique_windows")
    # Dropping the columns drops their CHECKs and the index with them.
    op.execute(
        "ALTER TABLE pgqueue.jobs DROP COLUMN debounce, DROP COLUMN unique_for, "
        "DROP COLUMN unique_key"
    )
