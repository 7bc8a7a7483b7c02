"""Trace context stored with a job: ``pgqueue.jobs.trace_context``, the W3C carrier
(``{"traceparent": ..., "tracestate": ...}``) of the enqueue, so that the job's run
joins the trace that enqueued it (pgqueue.hooks, pgqueue.contrib.opentelemetry).

A nullable column without a default: PostgreSQL adds it to the catalog only, without
rewriting or scanning the table, under a brief ACCESS EXCLUSIVE lock.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# As in schema.sql.
COMMENT = (
    "COMMENT ON COLUMN pgqueue.jobs.trace_context IS "
    "'The W3C trace context of the enqueue "
    '({"traceparent": ..., "tracestate": ...}); NULL: none.\''
)


def upgrade() -> None:
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN trace_context jsonb")
    op.execute(COMMENT)


def downgrade() -> None:
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN trace_context")
