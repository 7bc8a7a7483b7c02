"""Cancel and retry by hand: the SQL functions pgqueue.cancel_job and pgqueue.retry_job,
which the library calls too, so that psql and Python do exactly the same thing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE_SQL = r"""
-- Cancel a job by hand. A queued job never starts; a running one is marked cancelled
-- at once (its worker's outcome is then dropped) and its worker is told by NOTIFY so
-- that it stops the task. Returns the state the job was in; a job that has already
-- finished raises object_not_in_prerequisite_state, an unknown id no_data_found.
CREATE FUNCTION pgqueue.cancel_job(job_id bigint) RETURNS pgqueue.job_state
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
    RETURN old_state;
END
$$;

-- Retry a failed or cancelled job by hand: queued again now, its error history kept,
-- with one more attempt allowed if it had used them all. Wakes the queue's workers.
CREATE FUNCTION pgqueue.retry_job(job_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    old_state pgqueue.job_state;
    job_queue text;
BEGIN
    SELECT state INTO old_state FROM pgqueue.jobs WHERE id = job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgqueue: there is no job %', job_id USING ERRCODE = 'no_data_found';
    END IF;
    IF old_state NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'pgqueue: job % is %; only failed or cancelled jobs can be retried',
            job_id, old_state USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE pgqueue.jobs
    SET state = 'queued', run_at = now(), finished_at = NULL,
        max_attempts = GREATEST(max_attempts, attempts + 1)
    WHERE id = job_id
    RETURNING queue INTO job_queue;
    PERFORM pg_notify('pgqueue_enqueued', job_queue);
END
$$;
"""

DOWNGRADE_SQL = """
DROP FUNCTION pgqueue.retry_job(bigint);
DROP FUNCTION pgqueue.cancel_job(bigint);
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
