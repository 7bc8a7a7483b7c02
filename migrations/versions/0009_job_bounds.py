"""Bounds on a job's values: run_at (and created_at, started_at, finished_at) between
0001-01-02 and 9999-12-30 UTC, and timeout at most 100 years (pgqueue.limits). pgqueue refuses values outside
them before writing; these constraints hold rows written by hand (psql) to the same, so
that every row stays readable by Python (whose datetime ends at year 9999).

Also: pgqueue.prune_jobs() takes the queues to prune (NULL: all), so that a worker
prunes only the queues it serves, with its own retention, never another group of
workers' queues with settings that are not theirs. Old callers (four arguments) keep
working.

Rows already outside the bounds could never be read back by pgqueue (every listing
that met one failed): they are moved onto the nearest bound first.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PRUNE_JOBS = """
-- Delete finished jobs older than their state's retention: succeeded jobs finished more
-- than keep_succeeded ago, and so on; a NULL retention keeps that state's jobs forever.
-- Only jobs of the given queues (NULL: every queue). At most max_rows rows go per call
-- (NULL: no limit), so that a large backlog can be pruned in short transactions;
-- returns how many went. Jobs locked by someone else (a retry in progress) are left for
-- the next call. A pruned job's idempotency key is free again.
CREATE FUNCTION pgqueue.prune_jobs(
    keep_succeeded interval,
    keep_failed interval,
    keep_cancelled interval,
    max_rows integer DEFAULT NULL,
    queues text[] DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT id FROM pgqueue.jobs
        WHERE ((state = 'succeeded' AND finished_at < now() - keep_succeeded)
            OR (state = 'failed' AND finished_at < now() - keep_failed)
            OR (state = 'cancelled' AND finished_at < now() - keep_cancelled))
          AND (queues IS NULL OR queue = ANY(queues))
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgqueue.jobs j USING doomed d WHERE j.id = d.id RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;
"""

OLD_PRUNE_JOBS = """
CREATE FUNCTION pgqueue.prune_jobs(
    keep_succeeded interval,
    keep_failed interval,
    keep_cancelled interval,
    max_rows integer DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    WITH doomed AS (
        SELECT id FROM pgqueue.jobs
        WHERE (state = 'succeeded' AND finished_at < now() - keep_succeeded)
           OR (state = 'failed' AND finished_at < now() - keep_failed)
           OR (state = 'cancelled' AND finished_at < now() - keep_cancelled)
        LIMIT max_rows
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgqueue.jobs j USING doomed d WHERE j.id = d.id RETURNING 1
    )
    SELECT count(*) FROM gone;
$$;
"""

UPGRADE_SQL = f"""
-- One pass over the table; adding the constraints below takes a second one. CASE, not
-- LEAST/GREATEST, which would turn a NULL (no timeout, not started) into the bound.
UPDATE pgqueue.jobs
SET run_at = CASE WHEN run_at < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'
         WHEN run_at > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00' ELSE run_at END,
    created_at = CASE WHEN created_at < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'
             WHEN created_at > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00' ELSE created_at END,
    started_at = CASE WHEN started_at < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'
             WHEN started_at > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00' ELSE started_at END,
    finished_at = CASE WHEN finished_at < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'
              WHEN finished_at > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00' ELSE finished_at END,
    timeout = CASE WHEN timeout > interval '3153600000 seconds'
                   THEN interval '3153600000 seconds' ELSE timeout END
WHERE run_at NOT BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
   OR created_at NOT BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
   OR started_at NOT BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
   OR finished_at NOT BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
   OR timeout > interval '3153600000 seconds';

ALTER TABLE pgqueue.jobs
    ADD CONSTRAINT jobs_run_at_check
        CHECK (run_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'),
    ADD CONSTRAINT jobs_timeout_max_check CHECK (timeout <= interval '3153600000 seconds'),
    -- pgqueue writes these with now(); a NULL passes, as in any CHECK.
    ADD CONSTRAINT jobs_times_check CHECK (
        created_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
        AND started_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
        AND finished_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00');

DROP FUNCTION pgqueue.prune_jobs(interval, interval, interval, integer);
{PRUNE_JOBS}
"""

DOWNGRADE_SQL = f"""
DROP FUNCTION pgqueue.prune_jobs(interval, interval, interval, integer, text[]);
{OLD_PRUNE_JOBS}
ALTER TABLE pgqueue.jobs
    DROP CONSTRAINT jobs_times_check,
    DROP CONSTRAINT jobs_timeout_max_check,
    DROP CONSTRAINT jobs_run_at_check;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
