"""Bounds on the job values a user chooses: run_at between 0001-01-02 and 9999-12-30
UTC, and timeout at most 100 years (pgqueue.limits). pgqueue refuses values outside
them before writing; these constraints hold rows written by hand (psql) to the same, so
that every row stays readable by Python (whose datetime ends at year 9999).

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

UPGRADE_SQL = """
-- One pass over the table; adding the constraints below takes a second one.
UPDATE pgqueue.jobs
SET run_at = LEAST(GREATEST(run_at, '0001-01-02 00:00:00+00'), '9999-12-30 00:00:00+00'),
    timeout = LEAST(timeout, interval '3153600000 seconds')
WHERE run_at NOT BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
   OR timeout > interval '3153600000 seconds';

ALTER TABLE pgqueue.jobs
    ADD CONSTRAINT jobs_run_at_check
        CHECK (run_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'),
    ADD CONSTRAINT jobs_timeout_max_check CHECK (timeout <= interval '3153600000 seconds');
"""

DOWNGRADE_SQL = """
ALTER TABLE pgqueue.jobs
    DROP CONSTRAINT jobs_timeout_max_check,
    DROP CONSTRAINT jobs_run_at_check;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
