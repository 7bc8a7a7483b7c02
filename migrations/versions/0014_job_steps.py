"""Durable steps: the pgqueue.job_steps table (a job's finished steps and their results).
See the section "Durable steps" of pgqueue/sql/schema.sql.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# As in schema.sql. A new, empty table: nothing is rewritten or scanned.
STEPS_SQL = r"""
CREATE TABLE pgqueue.job_steps (
    job_id      bigint NOT NULL REFERENCES pgqueue.jobs (id) ON DELETE CASCADE
                DEFERRABLE INITIALLY DEFERRED,
    name        text NOT NULL,
    result      jsonb NOT NULL,
    attempt     integer NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name),
    CONSTRAINT job_steps_name_check CHECK (length(name) BETWEEN 1 AND 255),
    CONSTRAINT job_steps_attempt_check CHECK (attempt >= 1),
    CONSTRAINT job_steps_finished_at_check
        CHECK (finished_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00')
);

COMMENT ON TABLE pgqueue.job_steps IS
    'Durable steps: the result of each step a job finished (current_job().step), returned to its later attempts instead of running the step again.';
"""


def upgrade() -> None:
    op.execute(STEPS_SQL)


def downgrade() -> None:
    op.execute("DROP TABLE pgqueue.job_steps")
