"""The outcome writes cost a constant per job, whatever the batch: the plans of
complete_succeeded, complete_failed and snooze_jobs, generic (the one a prepared
statement settles on) and custom, never compare each job of the batch with each
other one.

A form of complete_succeeded with ``j.id = ANY ($1)`` beside the join planned the table
as the outer side of a nested loop and the batch as the inner one, filtered by the
join: n x n comparisons. With a write that fell behind (its batch grew), a 450,000-job
batch ran for minutes and the next one grew larger still. The rows a join filter
removes are the measure here: linear in the batch for a sound plan, quadratic for that
one."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from pgqueue.sql import query

RUNNING = 20_000
BATCH = 4_000


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


@pytest.fixture
def running_jobs(dsn: str) -> str:
    """RUNNING jobs running under one worker, analysed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgqueue.jobs (queue, task, args) "
            "SELECT 'plans', 'noop', '{}' FROM generate_series(1, %s)",
            (RUNNING,),
        )
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now(), "
            "worker_id = gen_random_uuid()"
        )
        conn.execute("VACUUM ANALYZE pgqueue.jobs")
    return dsn


STATEMENTS = {
    "complete_succeeded": (
        "(bigint[], text[], integer[])",
        lambda ids: (ids, [None] * len(ids), [1] * len(ids)),
    ),
    "complete_failed": (
        "(bigint[], text[], float8[], integer[])",
        lambda ids: (ids, ['{"error": "x"}'] * len(ids), [None] * len(ids), [1] * len(ids)),
    ),
    "snooze_jobs": (
        "(bigint[], float8[], integer[])",
        lambda ids: (ids, [60.0] * len(ids), [1] * len(ids)),
    ),
}


@pytest.mark.parametrize("plan_mode", ["force_generic_plan", "force_custom_plan"])
@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_an_outcome_batch_is_joined_in_linear_work(
    running_jobs: str, name: str, plan_mode: str
) -> None:
    types, params = STATEMENTS[name]
    with psycopg.connect(running_jobs) as conn:
        ids = [
            r[0]
            for r in conn.execute("SELECT id FROM pgqueue.jobs ORDER BY id DESC LIMIT %s", (BATCH,))
        ]
        conn.execute(f"SET plan_cache_mode = {plan_mode}")
        conn.execute(f"PREPARE outcome_write {types} AS " + query(name).strip().removesuffix(";"))
        cur = psycopg.ClientCursor(conn)
        args = params(ids)
        placeholders = ", ".join(["%s"] * len(args))
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE outcome_write({placeholders})", args)
        row = cur.fetchone()
        assert row is not None
        plan = row[0][0]["Plan"]
        conn.rollback()
    nodes = _nodes(plan)
    removed = sum(n.get("Rows Removed by Join Filter", 0) * n.get("Actual Loops", 1) for n in nodes)
    # The shape that is quadratic: the batch (a function scan) inside a nested loop.
    assert removed <= 2 * BATCH, json.dumps(
        [(n["Node Type"], n.get("Rows Removed by Join Filter")) for n in nodes]
    )
    updated = [n for n in nodes if n["Node Type"] == "ModifyTable"]
    # Every job of the batch found (the rows fed to the update).
    assert updated
    assert updated[0]["Plans"][0]["Actual Rows"] == BATCH
