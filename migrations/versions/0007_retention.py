"""Retention: an index on finished jobs and pgqueue.prune_jobs(), which workers call
to delete finished jobs older than their state's retention.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
-- Finished jobs by state and age: what pruning looks for.
CREATE INDEX jobs_finished_idx ON pgqueue.jobs (state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');

-- Delete finished jobs older than their state's retention: succeeded jobs finished more
-- than keep_succeeded ago, and so on; a NULL retention keeps that state's jobs forever.
-- At most max_rows rows go per call (NULL: no limit), so that a large backlog can be
-- pruned in short transactions; returns how many went. Jobs locked by someone else (a
-- retry in progress) are left for the next call. A pruned job's idempotency key is
-- free again.
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

DOWNGRADE_SQL = """
DROP FUNCTION pgqueue.prune_jobs(interval, interval, interval, integer);
DROP INDEX pgqueue.jobs_finished_idx;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
