"""Plain SQL is a first-class interface: the stats view, and every query the README
offers for pasting into psql."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import psycopg

README = Path(__file__).resolve().parent.parent / "README.md"


def test_queue_stats_counts_states_and_the_oldest_claimable_age(dsn):
    with psycopg.connect(dsn) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, run_at) VALUES
              ('a', 't', 'queued', now() - interval '90 seconds'),
              ('a', 't', 'queued', now() - interval '10 seconds'),
              ('a', 't', 'queued', now() + interval '1 hour'),
              ('a', 't', 'running', now()),
              ('a', 't', 'succeeded', now()),
              ('a', 't', 'failed', now()),
              ('b', 't', 'cancelled', now()),
              ('b', 't', 'queued', now() + interval '1 hour')
            """
        )
        rows = conn.execute(
            "SELECT queue, queued, claimable, running, succeeded, failed, cancelled, "
            "oldest_claimable_age FROM pgqueue.queue_stats ORDER BY queue"
        ).fetchall()
    a, b = rows
    assert a[:7] == ("a", 3, 2, 1, 1, 1, 0)
    assert timedelta(seconds=89) < a[7] < timedelta(seconds=120)
    assert b[:7] == ("b", 1, 0, 0, 0, 0, 1)
    assert b[7] is None  # nothing claimable: no age


def readme_sql_blocks() -> list[str]:
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)
    statements = []
    for block in blocks:
        text = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
        statements += [s.strip() for s in text.split(";") if s.strip()]
    return statements


def test_every_readme_query_runs(dsn):
    statements = readme_sql_blocks()
    assert len(statements) >= 6
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO pgqueue.jobs (id, task, state) "
            "VALUES (1001, 't', 'failed'), (1002, 't', 'queued')"
        )
        for statement in statements:
            conn.execute(
                statement.replace("id = 42", "id = 1001")
                .replace("retry_job(42)", "retry_job(1001)")
                .replace("cancel_job(43)", "cancel_job(1002)")
            )
        # The README's retry and cancel did what they say.
        states = dict(conn.execute("SELECT id, state::text FROM pgqueue.jobs").fetchall())
        assert states[1001] == "queued"
        assert states[1002] == "cancelled"
        # The pause and the resume after it: the queue is known, and not paused.
        paused = conn.execute("SELECT paused FROM pgqueue.queues WHERE name = 'emails'")
        assert paused.fetchone() == (False,)
        conn.rollback()
