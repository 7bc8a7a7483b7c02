"""The idle check of a limited queue no longer reads its whole backlog: the search for
keys whose rate window is full (``pgqueue.limited_queue_due``) runs only where keys have
a rate, and tests for a key's waiting jobs with one index probe per start logged.
Before, a plan could join the queue's every queued job first: 15-30 ms at each idle
check of a worker waiting at a limit, with a backlog of 60,000 jobs. Same answers.

A function only; the previous release's workers call it as before.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import op

if TYPE_CHECKING:
    from types import ModuleType

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

# As in schema.sql (a function's text is dumped as written: it must match character for
# character).
LIMITED_QUEUE_DUE = r"""
CREATE OR REPLACE FUNCTION pgqueue.limited_queue_due(queue_name text) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan  -- as claim_limited
AS $$
DECLARE
    lim pgqueue.queue_limits;
    t timestamptz := clock_timestamp();
    n bigint;
    rate_due timestamptz;
    key_due timestamptz;
    delayed timestamptz;
BEGIN
    SELECT * INTO lim FROM pgqueue.queue_limits WHERE queue = queue_name;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF lim.rate_count IS NOT NULL THEN
        SELECT COALESCE(sum(s.starts), 0) INTO n FROM pgqueue.job_starts s
        WHERE s.queue = queue_name AND s.concurrency_key = '' AND s.started_at > t - lim.rate_period;
        IF n >= lim.rate_count THEN
            -- The claim whose leaving the window makes room for one more start: the
            -- first, oldest first, by which n - N + 1 starts have left.
            SELECT w.started_at + lim.rate_period INTO rate_due
            FROM (
                SELECT s.started_at, sum(s.starts) OVER (ORDER BY s.started_at) AS gone
                FROM pgqueue.job_starts s
                WHERE s.queue = queue_name AND s.concurrency_key = ''
                  AND s.started_at > t - lim.rate_period
            ) AS w
            WHERE w.gone >= n - lim.rate_count + 1
            ORDER BY w.started_at LIMIT 1;
        END IF;
    END IF;
    -- Keys whose window is full and that have jobs waiting: the first start to leave.
    -- Only where keys have a rate. The test for waiting jobs is a scalar subquery, so
    -- that it stays a probe of jobs_key_claim_idx per start logged: as EXISTS it became
    -- a join (a LIMIT in it is dropped), and a plan could read every queued job of the
    -- queue first (15-30 ms an idle check with a backlog of 60,000).
    IF lim.key_rate_count IS NOT NULL OR EXISTS (
        SELECT FROM pgqueue.key_limits k WHERE k.queue = queue_name AND k.rate_count IS NOT NULL)
    THEN
        SELECT min(f.due) INTO key_due FROM (
            SELECT min(s.started_at) + COALESCE(kl.rate_period, lim.key_rate_period) AS due
            FROM pgqueue.job_starts s
            LEFT JOIN pgqueue.key_limits kl
                ON kl.queue = s.queue AND kl.concurrency_key = s.concurrency_key
            WHERE s.queue = queue_name AND s.concurrency_key <> ''
              AND s.started_at > t - COALESCE(kl.rate_period, lim.key_rate_period)
              AND (SELECT true FROM pgqueue.jobs j
                   WHERE j.state = 'queued' AND j.queue = queue_name
                     AND j.concurrency_key = s.concurrency_key AND j.run_at <= t
                   LIMIT 1)
            GROUP BY s.concurrency_key, kl.rate_count, kl.rate_period
            HAVING sum(s.starts) >= COALESCE(kl.rate_count, lim.key_rate_count)
        ) AS f;
    END IF;
    SELECT min(j.run_at) INTO delayed FROM pgqueue.jobs j
    WHERE j.state = 'queued' AND j.queue = queue_name AND j.run_at > t;
    RETURN LEAST(rate_due, key_due, delayed);
END
$$;
"""


def _earlier(name: str) -> ModuleType:
    """An earlier revision's module, for the function text a downgrade restores."""
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
    op.execute(LIMITED_QUEUE_DUE)


def downgrade() -> None:
    flow = _earlier("0012_flow_limits.py").UPGRADE_SQL
    op.execute(_function(flow, "CREATE FUNCTION pgqueue.limited_queue_due("))
