"""Worker leases: each worker records its own lease and heartbeat interval in
pgqueue.workers, so that the rescue judges every worker by its own lease rather than by
the rescuer's. Rows of workers that predate this revision keep NULL in both.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Nullable, with no default: adding the columns rewrites nothing, and a worker still
# running the previous release (which does not write them) keeps registering.
UPGRADE_SQL = """
ALTER TABLE pgqueue.workers
    ADD COLUMN lease interval,
    ADD COLUMN heartbeat_interval interval,
    ADD CONSTRAINT workers_lease_check CHECK (lease > interval '0'),
    ADD CONSTRAINT workers_heartbeat_interval_check
        CHECK (heartbeat_interval > interval '0' AND heartbeat_interval < lease);

COMMENT ON COLUMN pgqueue.workers.lease IS
    'How long this worker may go without a heartbeat before its jobs are rescued; NULL: a worker from before 0008, judged by the rescuer''s lease but never less than 15 s.';
COMMENT ON COLUMN pgqueue.workers.heartbeat_interval IS
    'How often this worker heartbeats (a fifth of its lease); NULL: a worker from before 0008.';
"""

DOWNGRADE_SQL = """
ALTER TABLE pgqueue.workers
    DROP CONSTRAINT workers_heartbeat_interval_check,
    DROP CONSTRAINT workers_lease_check,
    DROP COLUMN heartbeat_interval,
    DROP COLUMN lease;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
