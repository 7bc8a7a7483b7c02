"""Autovacuum on pgqueue.jobs keeps up with a busy queue: a vacuum of the jobs table
may spend ten times the server's default cost budget before each of its pauses
(``autovacuum_vacuum_cost_limit = 2000``, a per-table storage parameter; see the
section "Autovacuum on the jobs table" of pgqueue/sql/schema.sql).

Every job leaves two dead row versions behind it (its claim and its outcome are updates
of indexed columns), and pruning deletes it in the end: at 12,000 jobs/s that is some 2
million dead versions a minute. Throttled at the default budget, vacuum removed them
more slowly than the workers made them: in one 10-million-job soak the dead versions
piled up to 6 million and the table and its indexes doubled, growing with the jobs
processed rather than with the jobs retention keeps; with this budget the heap stayed
flat (``make soak-scale``; README, "Flat cost over 10 million jobs").

Only sets a storage parameter (a SHARE UPDATE EXCLUSIVE lock, for a moment: enqueues,
claims and a worker of the previous release go on). A value set by hand before is
replaced; one set after is kept, since no later migration touches it.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

# As in schema.sql, section "Autovacuum on the jobs table (migration 0021)".
UPGRADE = "ALTER TABLE pgqueue.jobs SET (autovacuum_vacuum_cost_limit = 2000);"

DOWNGRADE = "ALTER TABLE pgqueue.jobs RESET (autovacuum_vacuum_cost_limit);"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
