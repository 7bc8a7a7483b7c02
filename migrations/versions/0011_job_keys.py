"""Job keys for flow control: ``concurrency_key``, the key jobs share their
concurrency and rate limits by (and take turns by, between keys of one queue).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: no table rewrite. The CHECK is added NOT VALID
    # and validated at once: every existing row is NULL, which passes.
    op.execute("ALTER TABLE pgqueue.jobs ADD COLUMN concurrency_key text")
    op.execute(
        "ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_concurrency_key_check "
        "CHECK (length(concurrency_key) BETWEEN 1 AND 255) NOT VALID"
    )
    op.execute("ALTER TABLE pgqueue.jobs VALIDATE CONSTRAINT jobs_concurrency_key_check")


def downgrade() -> None:
    op.execute("ALTER TABLE pgqueue.jobs DROP COLUMN concurrency_key")
