"""Trace context everywhere: ``pgqueue.enqueue_dependants`` (the write of jobs with
depends_on, and of workflows) takes the jobs' trace contexts, ``p_trace_contexts``, so
that such a job's run joins the trace that enqueued it like any other job's (0017 added
the column; the statements of unique, debounced and sequenced jobs write it without a
schema change).

The argument list changes, so the function is dropped and created again (CREATE OR
REPLACE would add an overload). The new argument comes last with a default of NULL: a
caller of the 16 arguments before it, code older than 0018 during a rolling deploy,
still works (its jobs have no trace context).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_OLD_ARGUMENTS = (
    "text, boolean, text[], text[], text[], smallint[], integer[], timestamptz[], float8[], "
    "float8[], text[], text[], text[], integer[], integer[], bigint[]"
)
_NEW_ARGUMENTS = f"{_OLD_ARGUMENTS}, text[]"

# As in schema.sql (a function's text is dumped as written: it must match character for
# character).
ENQUEUE_DEPENDANTS = r"""
CREATE FUNCTION pgqueue.enqueue_dependants(
    workflow_name text,
    new_workflow boolean,
    p_queues text[],
    p_tasks text[],
    p_args text[],
    p_priorities smallint[],
    p_max_attempts integer[],
    p_run_ats timestamptz[],
    p_delays float8[],
    p_timeouts float8[],
    p_concurrency_keys text[],
    p_on_parent_failures text[],
    p_parent_results_args text[],
    edge_jobs integer[],
    edge_local_parents integer[],
    edge_parent_ids bigint[],
    p_trace_contexts text[] DEFAULT NULL
) RETURNS TABLE (out_workflow_id bigint, out_id bigint, out_state text,
                 out_created_at timestamptz, out_run_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    wf bigint;
    outside bigint[];
    found_ids bigint[];
    found_states pgqueue.job_state[];
    missing text;
BEGIN
    ids := ARRAY(SELECT nextval('pgqueue.jobs_id_seq') FROM generate_series(1, cardinality(p_tasks)));
    IF new_workflow THEN
        INSERT INTO pgqueue.workflows (name, jobs) VALUES (workflow_name, cardinality(p_tasks))
        RETURNING id INTO wf;
    END IF;
    outside := ARRAY(SELECT DISTINCT x.p FROM unnest(edge_parent_ids) AS x(p)
                     WHERE x.p IS NOT NULL ORDER BY x.p);
    IF cardinality(outside) > 0 THEN
        WITH flagged AS (
            UPDATE pgqueue.jobs j SET has_dependants = true
            WHERE j.id = ANY (outside)
            RETURNING j.id, j.state
        )
        SELECT array_agg(f.id), array_agg(f.state) INTO found_ids, found_states FROM flagged f;
        IF cardinality(found_ids) IS DISTINCT FROM cardinality(outside) THEN
            SELECT string_agg(x.p::text, ', ' ORDER BY x.p) INTO missing
            FROM unnest(outside) AS x(p) WHERE x.p <> ALL (COALESCE(found_ids, '{}'));
            RAISE EXCEPTION 'pgqueue: depends_on names no job: %', missing
                USING ERRCODE = 'foreign_key_violation', DETAIL = missing;
        END IF;
    END IF;
    WITH e AS (
        SELECT ids[x.job] AS job_id, x.pos::integer AS pos,
               COALESCE(ids[x.local_parent], x.parent_id) AS parent_id,
               CASE WHEN f.state::text IN ('succeeded', 'failed', 'cancelled') THEN f.state END
                   AS parent_state
        FROM unnest(edge_jobs, edge_local_parents, edge_parent_ids) WITH ORDINALITY
             AS x(job, local_parent, parent_id, pos)
        LEFT JOIN unnest(found_ids, found_states) AS f(id, state) ON f.id = x.parent_id
    ), edges AS (
        INSERT INTO pgqueue.job_dependencies (job_id, position, parent_id, parent_state)
        SELECT e.job_id, e.pos, e.parent_id, e.parent_state FROM e
    ), waits AS (
        SELECT e.job_id, (count(*) FILTER (WHERE e.parent_state IS NULL))::integer AS waiting
        FROM e GROUP BY e.job_id
    ), parents AS (
        SELECT DISTINCT x.local_parent FROM unnest(edge_local_parents) AS x(local_parent)
        WHERE x.local_parent IS NOT NULL
    )
    INSERT INTO pgqueue.jobs (id, queue, task, args, priority, max_attempts, run_at, timeout,
                              concurrency_key, workflow_id, parents_waiting, on_parent_failure,
                              parent_results_arg, has_dependants, trace_context, state)
    SELECT ids[u.i], u.queue, u.task, u.args::jsonb, u.priority, u.max_attempts,
           COALESCE(u.run_at, now() + make_interval(secs => u.delay)),
           make_interval(secs => u.timeout), u.concurrency_key, wf, w.waiting,
           CASE WHEN w.job_id IS NOT NULL THEN COALESCE(u.on_parent_failure, 'cancel') END,
           CASE WHEN w.job_id IS NOT NULL THEN u.parent_results_arg END,
           p.local_parent IS NOT NULL, u.trace_context::jsonb,
           (CASE WHEN w.job_id IS NULL THEN 'queued' ELSE 'blocked' END)::pgqueue.job_state
    -- A NULL p_trace_contexts (an older caller's) is padded with NULLs as a short array is.
    FROM unnest(p_queues, p_tasks, p_args, p_priorities, p_max_attempts, p_run_ats, p_delays,
                p_timeouts, p_concurrency_keys, p_on_parent_failures, p_parent_results_args,
                p_trace_contexts)
         WITH ORDINALITY AS u(queue, task, args, priority, max_attempts, run_at, delay, timeout,
                              concurrency_key, on_parent_failure, parent_results_arg,
                              trace_context, i)
    LEFT JOIN waits w ON w.job_id = ids[u.i]
    LEFT JOIN parents p ON p.local_parent = u.i;
    IF found_states IS NOT NULL
       AND found_states && ARRAY['succeeded', 'failed', 'cancelled']::pgqueue.job_state[] THEN
        -- Some parents had ended before this enqueue: settle the dependants they doom
        -- (their own dependants of this batch go with them, by the trigger) or release.
        UPDATE pgqueue.jobs j
        SET state = 'cancelled', finished_at = now(),
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                'attempt', 0,
                'type', 'pgqueue.ParentFailed',
                'message', format('parent job %s ended %s', f.parent_id, f.parent_state),
                'traceback', NULL,
                'parent_id', f.parent_id,
                'parent_state', f.parent_state,
                'at', now()))
        FROM (SELECT DISTINCT ON (d.job_id) d.job_id, d.parent_id, d.parent_state
              FROM pgqueue.job_dependencies d
              WHERE d.job_id = ANY (ids) AND d.parent_state::text IN ('failed', 'cancelled')
              ORDER BY d.job_id, d.position) AS f
        WHERE j.id = f.job_id AND j.on_parent_failure = 'cancel' AND j.state = 'blocked';
        PERFORM pgqueue.release_dependants(ARRAY(
            SELECT j.id FROM pgqueue.jobs j
            WHERE j.id = ANY (ids) AND j.state = 'blocked' AND j.parents_waiting = 0));
    END IF;
    RETURN QUERY
        SELECT wf, j.id, j.state::text, j.created_at, j.run_at
        FROM pgqueue.jobs j WHERE j.id = ANY (ids) ORDER BY j.id;
END
$$;
"""

# As 0015 wrote it.
ENQUEUE_DEPENDANTS_BEFORE = r"""
CREATE FUNCTION pgqueue.enqueue_dependants(
    workflow_name text,
    new_workflow boolean,
    p_queues text[],
    p_tasks text[],
    p_args text[],
    p_priorities smallint[],
    p_max_attempts integer[],
    p_run_ats timestamptz[],
    p_delays float8[],
    p_timeouts float8[],
    p_concurrency_keys text[],
    p_on_parent_failures text[],
    p_parent_results_args text[],
    edge_jobs integer[],
    edge_local_parents integer[],
    edge_parent_ids bigint[]
) RETURNS TABLE (out_workflow_id bigint, out_id bigint, out_state text,
                 out_created_at timestamptz, out_run_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    wf bigint;
    outside bigint[];
    found_ids bigint[];
    found_states pgqueue.job_state[];
    missing text;
BEGIN
    ids := ARRAY(SELECT nextval('pgqueue.jobs_id_seq') FROM generate_series(1, cardinality(p_tasks)));
    IF new_workflow THEN
        INSERT INTO pgqueue.workflows (name, jobs) VALUES (workflow_name, cardinality(p_tasks))
        RETURNING id INTO wf;
    END IF;
    outside := ARRAY(SELECT DISTINCT x.p FROM unnest(edge_parent_ids) AS x(p)
                     WHERE x.p IS NOT NULL ORDER BY x.p);
    IF cardinality(outside) > 0 THEN
        WITH flagged AS (
            UPDATE pgqueue.jobs j SET has_dependants = true
            WHERE j.id = ANY (outside)
            RETURNING j.id, j.state
        )
        SELECT array_agg(f.id), array_agg(f.state) INTO found_ids, found_states FROM flagged f;
        IF cardinality(found_ids) IS DISTINCT FROM cardinality(outside) THEN
            SELECT string_agg(x.p::text, ', ' ORDER BY x.p) INTO missing
            FROM unnest(outside) AS x(p) WHERE x.p <> ALL (COALESCE(found_ids, '{}'));
            RAISE EXCEPTION 'pgqueue: depends_on names no job: %', missing
                USING ERRCODE = 'foreign_key_violation', DETAIL = missing;
        END IF;
    END IF;
    WITH e AS (
        SELECT ids[x.job] AS job_id, x.pos::integer AS pos,
               COALESCE(ids[x.local_parent], x.parent_id) AS parent_id,
               CASE WHEN f.state::text IN ('succeeded', 'failed', 'cancelled') THEN f.state END
                   AS parent_state
        FROM unnest(edge_jobs, edge_local_parents, edge_parent_ids) WITH ORDINALITY
             AS x(job, local_parent, parent_id, pos)
        LEFT JOIN unnest(found_ids, found_states) AS f(id, state) ON f.id = x.parent_id
    ), edges AS (
        INSERT INTO pgqueue.job_dependencies (job_id, position, parent_id, parent_state)
        SELECT e.job_id, e.pos, e.parent_id, e.parent_state FROM e
    ), waits AS (
        SELECT e.job_id, (count(*) FILTER (WHERE e.parent_state IS NULL))::integer AS waiting
        FROM e GROUP BY e.job_id
    ), parents AS (
        SELECT DISTINCT x.local_parent FROM unnest(edge_local_parents) AS x(local_parent)
        WHERE x.local_parent IS NOT NULL
    )
    INSERT INTO pgqueue.jobs (id, queue, task, args, priority, max_attempts, run_at, timeout,
                              concurrency_key, workflow_id, parents_waiting, on_parent_failure,
                              parent_results_arg, has_dependants, state)
    SELECT ids[u.i], u.queue, u.task, u.args::jsonb, u.priority, u.max_attempts,
           COALESCE(u.run_at, now() + make_interval(secs => u.delay)),
           make_interval(secs => u.timeout), u.concurrency_key, wf, w.waiting,
           CASE WHEN w.job_id IS NOT NULL THEN COALESCE(u.on_parent_failure, 'cancel') END,
           CASE WHEN w.job_id IS NOT NULL THEN u.parent_results_arg END,
           p.local_parent IS NOT NULL,
           (CASE WHEN w.job_id IS NULL THEN 'queued' ELSE 'blocked' END)::pgqueue.job_state
    FROM unnest(p_queues, p_tasks, p_args, p_priorities, p_max_attempts, p_run_ats, p_delays,
                p_timeouts, p_concurrency_keys, p_on_parent_failures, p_parent_results_args)
         WITH ORDINALITY AS u(queue, task, args, priority, max_attempts, run_at, delay, timeout,
                              concurrency_key, on_parent_failure, parent_results_arg, i)
    LEFT JOIN waits w ON w.job_id = ids[u.i]
    LEFT JOIN parents p ON p.local_parent = u.i;
    IF found_states IS NOT NULL
       AND found_states && ARRAY['succeeded', 'failed', 'cancelled']::pgqueue.job_state[] THEN
        -- Some parents had ended before this enqueue: settle the dependants they doom
        -- (their own dependants of this batch go with them, by the trigger) or release.
        UPDATE pgqueue.jobs j
        SET state = 'cancelled', finished_at = now(),
            errors = j.errors || jsonb_build_array(jsonb_build_object(
                'attempt', 0,
                'type', 'pgqueue.ParentFailed',
                'message', format('parent job %s ended %s', f.parent_id, f.parent_state),
                'traceback', NULL,
                'parent_id', f.parent_id,
                'parent_state', f.parent_state,
                'at', now()))
        FROM (SELECT DISTINCT ON (d.job_id) d.job_id, d.parent_id, d.parent_state
              FROM pgqueue.job_dependencies d
              WHERE d.job_id = ANY (ids) AND d.parent_state::text IN ('failed', 'cancelled')
              ORDER BY d.job_id, d.position) AS f
        WHERE j.id = f.job_id AND j.on_parent_failure = 'cancel' AND j.state = 'blocked';
        PERFORM pgqueue.release_dependants(ARRAY(
            SELECT j.id FROM pgqueue.jobs j
            WHERE j.id = ANY (ids) AND j.state = 'blocked' AND j.parents_waiting = 0));
    END IF;
    RETURN QUERY
        SELECT wf, j.id, j.state::text, j.created_at, j.run_at
        FROM pgqueue.jobs j WHERE j.id = ANY (ids) ORDER BY j.id;
END
$$;
"""


def upgrade() -> None:
    op.execute(f"DROP FUNCTION pgqueue.enqueue_dependants({_OLD_ARGUMENTS})")
    op.execute(ENQUEUE_DEPENDANTS)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION pgqueue.enqueue_dependants({_NEW_ARGUMENTS})")
    op.execute(ENQUEUE_DEPENDANTS_BEFORE)
