"""Rate-only queues reserve their starts: a claim of a queue whose one limit is its rate
no longer holds the queue's advisory lock through its commit. A transaction of its own
reserves the starts under the lock (``pgqueue.reserve_starts``: counts the window, logs
up to the claim's size at the clock after the lock, commits asynchronously); the claim
then takes that many jobs at most without the lock, each starting at the reservation's
time, and gives back what it did not find (``pgqueue.claim_jobs_limited``, a new form
with the reservations; ``pgqueue.claim_limited`` gains ``reserved_at``). Exact as
before: the log's times follow the lock's order whoever wrote them. See the section
"Flow control" of pgqueue/sql/schema.sql and pgqueue/flow.py.

Functions only. The previous release's workers call claim_jobs_limited with four
arguments: that form stays (a call of the new one with no reservations), so they claim
as before, under the lock, through and after the upgrade.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from types import ModuleType

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

# As in schema.sql (a function's text is dumped as written: it must match character for
# character).
RATE_ONLY = r"""
CREATE FUNCTION pgqueue.rate_only(lim pgqueue.queue_limits) RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT lim.rate_count IS NOT NULL AND lim.concurrency IS NULL
       AND lim.key_concurrency IS NULL AND lim.key_rate_count IS NULL
       AND NOT EXISTS (SELECT FROM pgqueue.key_limits k WHERE k.queue = lim.queue)
$$;
"""

CLAIM_LIMITED = r"""
CREATE FUNCTION pgqueue.claim_limited(
    queue_name text, want integer, worker uuid, reserved_at timestamptz
)
RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    lim pgqueue.queue_limits;
    -- The claim's time: after the lock was granted, so later than every start logged;
    -- or that of the reservation, which the log holds in the order of the lock too.
    t timestamptz := COALESCE(reserved_at, clock_timestamp());
    free integer := want;
    running integer := 0;
    oldest interval;
    walk_max integer;
    ids bigint[];
    rated_keys text[];
    last_served text;
    last_seen text;
    n integer;
    -- Whether a queued job of the queue has a key (one descent of jobs_key_claim_idx):
    -- without one, the jobs are taken in claim order with no walk between keys.
    has_keys boolean := (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
                         WHERE j.state = 'queued' AND j.queue = queue_name) IS NOT NULL;
BEGIN
    SELECT * INTO lim FROM pgqueue.queue_limits WHERE queue = queue_name;
    IF NOT FOUND THEN
        RETURN;  -- limits cleared since the caller looked: the next claim treats it as plain
    END IF;
    IF reserved_at IS NOT NULL THEN
        IF NOT pgqueue.rate_only(lim) THEN
            RETURN;  -- limits changed since the reservation: the next claim takes the lock
        END IF;
        IF has_keys THEN
            -- Keys wait: they take turns from key_cursor, so these claims walk one at a
            -- time, on the queue's row (the reservations take the advisory lock).
            SELECT * INTO lim FROM pgqueue.queue_limits WHERE queue = queue_name FOR UPDATE;
        END IF;
        lim.rate_count := NULL;  -- counted and logged by the reservation
    END IF;
    IF lim.concurrency IS NOT NULL OR lim.key_concurrency IS NOT NULL
       OR EXISTS (SELECT FROM pgqueue.key_limits k WHERE k.queue = queue_name) THEN
        SELECT count(*) INTO running FROM pgqueue.jobs
        WHERE state = 'running' AND queue = queue_name;
    END IF;
    IF lim.concurrency IS NOT NULL THEN
        free := LEAST(free, lim.concurrency - running);
    END IF;
    oldest := GREATEST(lim.rate_period, lim.key_rate_period,
        (SELECT max(k.rate_period) FROM pgqueue.key_limits k WHERE k.queue = queue_name));
    IF oldest IS NOT NULL AND reserved_at IS NULL THEN
        DELETE FROM pgqueue.job_starts s WHERE s.queue = queue_name AND s.started_at <= t - oldest;
    END IF;
    IF lim.rate_count IS NOT NULL THEN
        free := LEAST(free, lim.rate_count - (
            SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
            WHERE s.queue = queue_name AND s.concurrency_key = '' AND s.started_at > t - lim.rate_period));
    END IF;
    IF free <= 0 THEN
        RETURN;
    END IF;
    IF NOT has_keys THEN
        -- No key among the queued jobs (one enqueued since waits for the next claim).
        ids := ARRAY(SELECT j.id FROM pgqueue.jobs j
                     WHERE j.state = 'queued' AND j.queue = queue_name
                       AND j.concurrency_key IS NULL AND j.run_at <= t
                     ORDER BY j.priority DESC, j.run_at, j.id
                     LIMIT free
                     FOR UPDATE SKIP LOCKED);
        n := cardinality(ids);
        -- Claimed below, as the walk's choice is.
    ELSE
        -- How many keys to look at: every key that is full has a running job or a start in
        -- its window, so this many always reach `free` keys with room when there are any.
        -- A walk cut short resumes where it stopped at the next claim (key_cursor).
        walk_max := free + running + 100;

        -- Choose and lock the jobs (the claim proper follows, by id).
        WITH RECURSIVE walk(k, pos, first) AS (
            -- The loose index scan: each step is the key after the last one among the
            -- queue's queued jobs, wrapping round to the first (two descents of
            -- jobs_key_claim_idx at most), until `walk_max` keys or back at the first.
            SELECT n.k, 1, n.k
            FROM (SELECT COALESCE(
                (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
                 WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key > lim.key_cursor),
                (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
                 WHERE j.state = 'queued' AND j.queue = queue_name)) AS k) AS n
            WHERE n.k IS NOT NULL
            UNION ALL
            SELECT n.k, w.pos + 1, w.first
            FROM walk w
            CROSS JOIN LATERAL (SELECT COALESCE(
                (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
                 WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key > w.k),
                (SELECT min(j.concurrency_key) FROM pgqueue.jobs j
                 WHERE j.state = 'queued' AND j.queue = queue_name)) AS k) AS n
            WHERE w.pos < walk_max AND n.k <> w.first
        ), room AS (
            SELECT w.k, w.pos, LEAST(free,
                CASE WHEN COALESCE(kl.concurrency, lim.key_concurrency) IS NOT NULL THEN
                    COALESCE(kl.concurrency, lim.key_concurrency) - (
                        SELECT count(*) FROM pgqueue.jobs r
                        WHERE r.state = 'running' AND r.queue = queue_name AND r.concurrency_key = w.k)::integer
                END,
                CASE WHEN COALESCE(kl.rate_count, lim.key_rate_count) IS NOT NULL THEN
                    COALESCE(kl.rate_count, lim.key_rate_count) - (
                        SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
                        WHERE s.queue = queue_name AND s.concurrency_key = w.k
                          AND s.started_at > t - COALESCE(kl.rate_period, lim.key_rate_period))::integer
                END) AS room,
                COALESCE(kl.rate_count, lim.key_rate_count) IS NOT NULL AS rated
            FROM walk w
            LEFT JOIN pgqueue.key_limits kl ON kl.queue = queue_name AND kl.concurrency_key = w.k
        ), keyed AS (
            SELECT c.id, c.priority, c.turn, r.pos, r.k, r.rated
            FROM room r
            CROSS JOIN LATERAL (
                SELECT x.id, x.priority, row_number() OVER () AS turn
                FROM (
                    SELECT j.id, j.priority
                    FROM pgqueue.jobs j
                    WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key = r.k
                      AND j.run_at <= t
                    -- The key first: the order of jobs_key_claim_idx, which then serves it
                    -- rather than a scan of the queue's claim order past other keys' jobs.
                    ORDER BY j.concurrency_key, j.priority DESC, j.run_at, j.id
                    LIMIT r.room
                    FOR UPDATE SKIP LOCKED
                ) AS x
            ) AS c
            WHERE r.room > 0
        ), unkeyed AS (
            -- Jobs without a key take their turn as one more key, ahead of the walk.
            SELECT x.id, x.priority, row_number() OVER () AS turn, 0 AS pos, NULL::text AS k,
                   false AS rated
            FROM (
                SELECT j.id, j.priority
                FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = queue_name AND j.concurrency_key IS NULL
                  AND j.run_at <= t
                ORDER BY j.concurrency_key, j.priority DESC, j.run_at, j.id  -- jobs_key_claim_idx
                LIMIT free
                FOR UPDATE SKIP LOCKED
            ) AS x
        ), chosen AS (
            SELECT c.id, c.pos, c.k, c.rated
            FROM (SELECT * FROM keyed UNION ALL SELECT * FROM unkeyed) AS c
            ORDER BY c.turn, c.priority DESC, c.pos
            LIMIT free
        )
        SELECT array_agg(c.id), array_agg(c.k) FILTER (WHERE c.rated), count(*),
               (SELECT c2.k FROM chosen c2 WHERE c2.k IS NOT NULL ORDER BY c2.pos DESC LIMIT 1),
               (SELECT w.k FROM walk w ORDER BY w.pos DESC LIMIT 1)
        INTO ids, rated_keys, n, last_served, last_seen
        FROM chosen c;

        -- The next claim's walk starts after the last key served; after the last key looked
        -- at when this claim found less than it could take.
        IF last_seen IS NOT NULL THEN
            UPDATE pgqueue.queue_limits
            SET key_cursor = CASE WHEN n < free OR last_served IS NULL THEN last_seen ELSE last_served END
            WHERE queue = queue_name;
        END IF;
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- By id, in a statement of its own: its plan is an index lookup whatever the plan
    -- cache decides (a join to the choice above could be planned as a scan of the table).
    -- state::text, not state: a plan made before the table had statistics matched the
    -- partial claim index's condition and scanned it whole (6-25 ms a claim, growing
    -- with the backlog) instead of looking the ids up by primary key (about 1.7 ms).
    RETURN QUERY
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = t, worker_id = worker,
        progress = NULL
    WHERE j.id = ANY (ids) AND j.state::text = 'queued'
    RETURNING j.*;
    IF lim.rate_count IS NOT NULL THEN
        INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
        VALUES (queue_name, '', t, n);
    END IF;
    IF rated_keys IS NOT NULL THEN
        INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
        SELECT queue_name, r.k, t, count(*) FROM unnest(rated_keys) AS r(k) GROUP BY r.k;
    END IF;
END
$$;
"""

CLAIM_LIMITED_QUEUES = r"""
CREATE OR REPLACE FUNCTION pgqueue.claim_limited_queues(
    queue_names text[], want integer, worker uuid, lock_space integer
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    got integer := 0;
    asked integer;
    n integer;
    share integer;
    short text[] := '{}';
BEGIN
    IF want <= 0 OR cardinality(queue_names) = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(lock_space, h.key)
    FROM (SELECT DISTINCT hashtext(x) AS key FROM unnest(queue_names) AS x ORDER BY 1) AS h;
    share := ceil(want::numeric / cardinality(queue_names));
    FOREACH q IN ARRAY queue_names LOOP
        asked := LEAST(share, want - got);
        EXIT WHEN asked <= 0;
        RETURN QUERY SELECT * FROM pgqueue.claim_limited(q, asked, worker, NULL);
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
        IF n < asked THEN
            short := short || q;
        END IF;
    END LOOP;
    FOREACH q IN ARRAY queue_names LOOP
        EXIT WHEN got >= want;
        CONTINUE WHEN q = ANY (short);
        RETURN QUERY SELECT * FROM pgqueue.claim_limited(q, want - got, worker, NULL);
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END LOOP;
END
$$;
"""

RESERVE_STARTS = r"""
CREATE FUNCTION pgqueue.reserve_starts(
    queue_names text[], want integer, lock_space integer, commit_async boolean
) RETURNS TABLE (queue_name text, granted integer, at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan  -- as claim_limited
AS $$
DECLARE
    lim pgqueue.queue_limits;
    q text;
BEGIN
    IF commit_async THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    FOR q IN
        SELECT l.queue FROM pgqueue.queue_limits l
        WHERE l.queue = ANY (queue_names)
          AND NOT EXISTS (SELECT FROM pgqueue.queues p WHERE p.name = l.queue AND p.paused)
        ORDER BY hashtext(l.queue), l.queue
    LOOP
        queue_name := q;
        granted := NULL;
        at := NULL;
        SELECT * INTO lim FROM pgqueue.queue_limits l WHERE l.queue = q;
        IF FOUND AND pgqueue.rate_only(lim) THEN
            PERFORM pg_advisory_xact_lock(lock_space, hashtext(q));
            at := clock_timestamp();  -- after the lock: later than every start logged
            -- Read again after the lock: the limit as the claims before us saw it.
            SELECT * INTO lim FROM pgqueue.queue_limits l WHERE l.queue = q;
            IF FOUND AND pgqueue.rate_only(lim) THEN
                DELETE FROM pgqueue.job_starts s
                WHERE s.queue = q AND s.started_at <= at - lim.rate_period;
                granted := GREATEST(0, LEAST(want, lim.rate_count - (
                    SELECT COALESCE(sum(s.starts), 0) FROM pgqueue.job_starts s
                    WHERE s.queue = q AND s.concurrency_key = ''
                      AND s.started_at > at - lim.rate_period)));
                IF granted > 0 THEN
                    INSERT INTO pgqueue.job_starts (queue, concurrency_key, started_at, starts)
                    VALUES (q, '', at, granted);
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
"""

CLAIM_JOBS_LIMITED = r"""
CREATE FUNCTION pgqueue.claim_jobs_limited(
    queue_names text[], want integer, worker uuid, lock_space integer,
    reserved text[], granted integer[], reserved_at timestamptz[]
) RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    limited text[];
    plain text[];
    locked text[];
    used integer[] := array_fill(0, ARRAY[cardinality(reserved)]);
    share integer;
    locked_share integer;
    asked integer;
    got integer := 0;
    n integer;
    i integer;
BEGIN
    SELECT COALESCE(array_agg(u.name ORDER BY u.ord) FILTER (WHERE l.queue IS NOT NULL), '{}'),
           COALESCE(array_agg(u.name ORDER BY u.ord) FILTER (WHERE l.queue IS NULL), '{}')
    INTO limited, plain
    FROM unnest(queue_names) WITH ORDINALITY AS u(name, ord)
    LEFT JOIN pgqueue.queue_limits l ON l.queue = u.name
    WHERE NOT EXISTS (SELECT FROM pgqueue.queues p WHERE p.name = u.name AND p.paused);
    locked := ARRAY(SELECT u.x FROM unnest(limited) WITH ORDINALITY AS u(x, ord)
                    WHERE u.x <> ALL (reserved) ORDER BY u.ord);
    share := ceil(want::numeric / GREATEST(1, cardinality(limited) + cardinality(plain)));
    -- The queues claimed under their locks first: their advisory locks are then all
    -- held before this claim locks a reserved queue's row (a walk between keys), so a
    -- claim holding such a row never waits for an advisory lock. (The other way round,
    -- one holding the row and waiting for a lock could deadlock with one holding that
    -- lock and waiting for the row: a refill, which locks every limited queue.)
    locked_share := ceil(want * cardinality(locked)::numeric
                         / GREATEST(1, cardinality(limited) + cardinality(plain)));
    IF cardinality(locked) > 0 THEN
        RETURN QUERY SELECT * FROM pgqueue.claim_limited_queues(locked, locked_share, worker,
                                                                lock_space);
        GET DIAGNOSTICS got = ROW_COUNT;
    END IF;
    -- Then the reserved queues, for a share each (their starts are logged already).
    FOR i IN 1 .. COALESCE(cardinality(reserved), 0) LOOP
        asked := LEAST(granted[i], share, want - got);
        CONTINUE WHEN asked <= 0 OR NOT reserved[i] = ANY (limited);
        RETURN QUERY SELECT * FROM pgqueue.claim_limited(
            reserved[i], asked, worker, reserved_at[i]);
        GET DIAGNOSTICS n = ROW_COUNT;
        used[i] := n;
        got := got + n;
    END LOOP;
    IF cardinality(plain) > 0 AND got < want THEN
        -- As claim_jobs: each queue in claim order, taking turns by rank.
        RETURN QUERY
        UPDATE pgqueue.jobs AS j
        SET state = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = worker,
            progress = NULL
        -- An array, not a join: a generic plan cannot know how few candidates there are.
        WHERE j.id = ANY (ARRAY(
            SELECT c.id
            FROM unnest(plain) AS q(name)
            CROSS JOIN LATERAL (
                SELECT x.id, x.priority, x.run_at, row_number() OVER () AS turn
                FROM (
                    SELECT c1.id, c1.priority, c1.run_at
                    FROM pgqueue.jobs c1
                    WHERE c1.state = 'queued' AND c1.queue = q.name AND c1.run_at <= now()
                    ORDER BY c1.priority DESC, c1.run_at, c1.id
                    LIMIT want - got
                    FOR UPDATE SKIP LOCKED
                ) AS x
            ) AS c
            ORDER BY c.turn, c.priority DESC, c.run_at, c.id
            LIMIT want - got))
        RETURNING j.*;
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END IF;
    -- What the others left: the locked queues again if they were offered less than all
    -- (their locks are held already), then the rest of each reservation.
    IF cardinality(locked) > 0 AND got < want AND locked_share < want THEN
        RETURN QUERY SELECT * FROM pgqueue.claim_limited_queues(locked, want - got, worker,
                                                                lock_space);
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END IF;
    FOR i IN 1 .. COALESCE(cardinality(reserved), 0) LOOP
        EXIT WHEN got >= want;
        asked := LEAST(granted[i], share, want);
        CONTINUE WHEN used[i] < asked OR used[i] >= granted[i] OR NOT reserved[i] = ANY (limited);
        RETURN QUERY SELECT * FROM pgqueue.claim_limited(
            reserved[i], LEAST(granted[i] - used[i], want - got), worker, reserved_at[i]);
        GET DIAGNOSTICS n = ROW_COUNT;
        used[i] := used[i] + n;
        got := got + n;
    END LOOP;
    -- Give back what was reserved and not claimed: one log row, the reservation's own.
    FOR i IN 1 .. COALESCE(cardinality(reserved), 0) LOOP
        CONTINUE WHEN used[i] >= granted[i];
        IF used[i] = 0 THEN
            DELETE FROM pgqueue.job_starts s
            WHERE s.ctid = (SELECT s1.ctid FROM pgqueue.job_starts s1
                            WHERE s1.queue = reserved[i] AND s1.concurrency_key = ''
                              AND s1.started_at = reserved_at[i] AND s1.starts = granted[i]
                            LIMIT 1);
        ELSE
            UPDATE pgqueue.job_starts s SET starts = used[i]
            WHERE s.ctid = (SELECT s1.ctid FROM pgqueue.job_starts s1
                            WHERE s1.queue = reserved[i] AND s1.concurrency_key = ''
                              AND s1.started_at = reserved_at[i] AND s1.starts = granted[i]
                            LIMIT 1);
        END IF;
    END LOOP;
    IF cardinality(limited) > 0 THEN
        RETURN NEXT NULL::pgqueue.jobs;  -- the marker
    END IF;
END
$$;
"""

# The four-argument form, the previous release's: now a call of the new one.
CLAIM_JOBS_LIMITED_UNRESERVED = r"""
CREATE OR REPLACE FUNCTION pgqueue.claim_jobs_limited(
    queue_names text[], want integer, worker uuid, lock_space integer
) RETURNS SETOF pgqueue.jobs
LANGUAGE sql
AS $$
    SELECT * FROM pgqueue.claim_jobs_limited(queue_names, want, worker, lock_space,
                                             '{}', '{}', '{}')
$$;
"""


def _earlier(name: str) -> ModuleType:
    """An earlier revision's module, for the function texts a downgrade restores."""
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"pgqueue_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function(sql: str, head: str) -> str:
    """The CREATE FUNCTION statement starting with ``head`` in ``sql``, made a CREATE OR
    REPLACE."""
    start = sql.index(head)
    end = sql.index("\n$$;\n", start) + len("\n$$;\n")
    return sql[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute("DROP FUNCTION pgqueue.claim_limited(text, integer, uuid)")
    op.execute(RATE_ONLY)
    op.execute(CLAIM_LIMITED)
    op.execute(CLAIM_LIMITED_QUEUES)
    op.execute(RESERVE_STARTS)
    op.execute(CLAIM_JOBS_LIMITED)
    op.execute(CLAIM_JOBS_LIMITED_UNRESERVED)


def downgrade() -> None:
    flow = _earlier("0012_flow_limits.py").UPGRADE_SQL
    op.execute(
        "DROP FUNCTION pgqueue.claim_jobs_limited("
        "text[], integer, uuid, integer, text[], integer[], timestamptz[])"
    )
    op.execute("DROP FUNCTION pgqueue.reserve_starts(text[], integer, integer, boolean)")
    op.execute("DROP FUNCTION pgqueue.claim_limited(text, integer, uuid, timestamptz)")
    op.execute("DROP FUNCTION pgqueue.rate_only(pgqueue.queue_limits)")
    op.execute(_earlier("0016_claim_by_primary_key.py").CLAIM_LIMITED)
    op.execute(_function(flow, "CREATE FUNCTION pgqueue.claim_limited_queues("))
    op.execute(_function(flow, "CREATE FUNCTION pgqueue.claim_jobs_limited("))
