"""The server's timeline: after a failover to a standby that had not received the last
commits (asynchronous replication), claims wait while every worker checks that the jobs
it runs are still its own, so that a job whose claim was lost does not run twice at
once (see the section "Failover: the server's timeline" of pgqueue/sql/schema.sql).

Adds a one-row table and a function; no existing table is touched, and a worker of the
previous release runs on beside it (it does not hold its claims after a failover).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# As in schema.sql, section "Failover: the server's timeline (migration 0020)".
UPGRADE = r"""
-- A promoted standby writes on a new timeline. With asynchronous replication the last
-- commits of the old primary are missing there, claims among them: a job its worker is
-- still running can be queued again, and another worker would run it beside the first
-- run. So every worker notes the timeline it sees (pgqueue.note_timeline(), at each new
-- connection of its pool and at each heartbeat). The first to see a new one records
-- when, here; from then every worker holds its claims for the longest lease of the
-- workers registered, while each checks that the jobs it runs are still its own and
-- gives up those that are not. A worker that cannot check within its lease fences
-- itself (it gives up all its jobs), so once the hold ends no lost claim still runs.
CREATE TABLE pgqueue.server_timeline (
    singleton   boolean PRIMARY KEY DEFAULT true CONSTRAINT server_timeline_one_row CHECK (singleton),
    timeline    bigint NOT NULL,
    changed_at  timestamptz NOT NULL,
    claims_held interval NOT NULL
);
COMMENT ON TABLE pgqueue.server_timeline IS
    'The timeline workers last saw; after a change (a promoted standby), claims wait until changed_at + claims_held.';

-- The timeline the server writes on (the first 8 hex digits of its WAL file name), and
-- how many seconds claims must still wait because it changed. Writes only when it did.
CREATE FUNCTION pgqueue.note_timeline(OUT timeline bigint, OUT claims_held_for float8)
LANGUAGE plpgsql AS $$
DECLARE
    current_timeline bigint :=
        ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::bigint;
BEGIN
    UPDATE pgqueue.server_timeline t
    SET timeline = current_timeline,
        changed_at = now(),
        claims_held = (SELECT COALESCE(max(w.lease), interval '15 seconds') FROM pgqueue.workers w)
    WHERE t.timeline <> current_timeline;
    IF NOT FOUND AND NOT EXISTS (SELECT FROM pgqueue.server_timeline) THEN
        -- The first note ever: there is no failover to hold claims for.
        INSERT INTO pgqueue.server_timeline (timeline, changed_at, claims_held)
        VALUES (current_timeline, '-infinity', interval '0')
        ON CONFLICT (singleton) DO NOTHING;
    END IF;
    SELECT t.timeline,
           CASE WHEN t.changed_at + t.claims_held > now()
                THEN extract(epoch FROM t.changed_at + t.claims_held - now())::float8
                ELSE 0 END
    INTO timeline, claims_held_for
    FROM pgqueue.server_timeline t;
END $$;
"""

DOWNGRADE = """
DROP FUNCTION pgqueue.note_timeline();
DROP TABLE pgqueue.server_timeline;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
