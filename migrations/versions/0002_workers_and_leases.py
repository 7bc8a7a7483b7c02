"""Worker registry and leases: workers register and heartbeat in pgqueue.workers, and a
running job records the worker that holds it, so that the jobs of a worker that stops
heartbeating can be rescued.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE_SQL = """
CREATE TABLE pgqueue.workers (
    id             uuid PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    queues         text[] NOT NULL,
    concurrency    integer NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pgqueue.workers IS 'Live workers; a job''s lease lasts while its worker heartbeats.';

ALTER TABLE pgqueue.jobs ADD COLUMN worker_id uuid;

CREATE INDEX jobs_running_worker_idx ON pgqueue.jobs (worker_id) WHERE state = 'running';
"""

DOWNGRADE_SQL = """
DROP INDEX pgqueue.jobs_running_worker_idx;
ALTER TABLE pgqueue.jobs DROP COLUMN worker_id;
DROP TABLE pgqueue.workers;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
