"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

# pgqueue migrations are plain SQL. Write the statements out in full here, never read
# them from pgqueue/sql/schema.sql: that file moves on with head, a revision must not.
# Update schema.sql to match the new head in the same change. op.execute() runs the
# string as SQLAlchemy text(): a colon right before a word (:name) is read as a bind
# parameter unless escaped with a backslash.

UPGRADE_SQL = """
"""

DOWNGRADE_SQL = """
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
