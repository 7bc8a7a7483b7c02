"""Progress: a running task may report how far it has got (any JSON), shown by the
API and the dashboard.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
ALTER TABLE pgqueue.jobs ADD COLUMN progress jsonb;
COMMENT ON COLUMN pgqueue.jobs.progress IS
    'What the running attempt last reported of its progress (current_job().set_progress).';
"""

DOWNGRADE_SQL = """
ALTER TABLE pgqueue.jobs DROP COLUMN progress;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
