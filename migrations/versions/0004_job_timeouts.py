"""Per-job timeouts: a job may carry its own deadline, which beats its task's.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
ALTER TABLE pgqueue.jobs ADD COLUMN timeout interval;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_timeout_check CHECK (timeout > interval '0');
COMMENT ON COLUMN pgqueue.jobs.timeout IS
    'How long one attempt may run; NULL takes the task''s timeout (or none).';
"""

DOWNGRADE_SQL = """
ALTER TABLE pgqueue.jobs DROP COLUMN timeout;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
