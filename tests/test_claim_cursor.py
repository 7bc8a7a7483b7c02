"""The claim cursor (pgqueue/claim_cursor.py): each worker's claim starts past the
entries its last claim left in the claim index, so that a long transaction pinning the
xmin horizon (or a vacuum running late) does not make every claim walk them; priority
order stays exact; jobs that land behind a cursor are found by the next full scan."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import structlog.testing

import pgqueue
from pgqueue import JobState, driver_sync
from pgqueue.claim_cursor import (
    DUE_REUSE_MAX,
    FULL_SCAN_MAX_PERIOD,
    HEAD,
    ClaimCursor,
    ClaimKey,
    DueAnswer,
    claim_starts,
    last_keys,
    start_params,
)
from pgqueue.executors import PsycopgExecutor
from pgqueue.sql import query
from pgqueue.testing import running_worker, wait_for_job

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WORKER = str(uuid.uuid4())


# --- the policy, no database -------------------------------------------------------------


def test_claim_order_is_priority_first_then_run_at_then_id():
    keys = [
        ClaimKey(0, T0, 5),
        ClaimKey(10, T0 + timedelta(hours=1), 9),
        ClaimKey(0, T0, 2),
        ClaimKey(-3, T0 - timedelta(days=1), 1),
        ClaimKey(0, T0 - timedelta(seconds=1), 7),
    ]
    ordered = sorted(keys, key=ClaimKey.order)
    assert [k.id for k in ordered] == [9, 7, 2, 5, 1]
    assert all(HEAD.order() < k.order() for k in keys)


def test_each_queue_keeps_the_last_key_of_its_own_jobs():
    last = last_keys(
        [
            ("a", ClaimKey(0, T0, 1)),
            ("b", ClaimKey(5, T0, 2)),
            ("a", ClaimKey(0, T0, 3)),
            ("a", ClaimKey(1, T0 + timedelta(hours=1), 4)),  # higher priority: earlier
            ("b", ClaimKey(0, T0 - timedelta(hours=1), 5)),  # lower priority: later
        ]
    )
    assert last == {"a": ClaimKey(0, T0, 3), "b": ClaimKey(0, T0 - timedelta(hours=1), 5)}
    assert claim_starts(["a", "c"], last) == [ClaimKey(0, T0, 3), HEAD]
    assert claim_starts(["a", "c"], None) == [HEAD, HEAD]
    assert start_params([HEAD, ClaimKey(0, T0, 3)]) == ([32767, 0], [HEAD.run_at, T0], [HEAD.id, 3])


def test_full_scans_come_first_after_an_error_and_at_a_period_set_by_their_extra_cost():
    cursor = ClaimCursor()
    starts, full = cursor.starts(["q"], now=100.0)
    assert full  # the first claim scans the whole queue
    assert starts == [HEAD]
    cursor.claimed([("q", ClaimKey(0, T0, 7))], full=True, elapsed=0.002, now=100.002)
    assert cursor.period == pytest.approx(0.04)  # 20 times what it cost (nothing to compare)
    assert cursor.starts(["q"], now=100.03) == ([ClaimKey(0, T0, 7)], False)
    # A claim that took nothing leaves the cursor where it was.
    cursor.claimed([], full=False, elapsed=0.001, now=100.031)
    assert cursor.cursor_cost == pytest.approx(0.001)
    assert cursor.starts(["q"], now=100.035) == ([ClaimKey(0, T0, 7)], False)
    assert cursor.starts(["q"], now=100.05)[1]  # the period has passed
    # A full scan that costs what a cursor claim does: full scans all along (a healthy
    # database, where the order is exactly the head scan's).
    cursor.claimed([], full=True, elapsed=0.0009, now=100.051)
    assert cursor.period == 0.0
    assert cursor.starts(["q"], now=100.051)[1]
    cursor.claimed([], full=True, elapsed=3.0, now=103.0)  # 3 s more than a cursor claim
    assert cursor.period == FULL_SCAN_MAX_PERIOD
    assert not cursor.starts(["q"], now=112.9)[1]
    assert cursor.starts(["q"], now=113.0)[1]
    # Cursor claims slowed by the worker's own loop count against the full scan's cost.
    for _ in range(30):
        cursor.claimed([], full=False, elapsed=0.05, now=113.0)
    cursor.claimed([], full=True, elapsed=0.052, now=113.1)
    assert cursor.period == pytest.approx(0.04, abs=0.01)
    cursor.rescan()  # after an error or a hand-back
    assert cursor.starts(["q"], now=113.101) == ([HEAD], True)
    assert cursor.full_scans == 4


def test_an_idle_workers_due_answer_is_reused_only_as_long_as_its_cost_allows():
    due = DueAnswer()
    assert due.reuse(0.0) is None  # never asked
    due.answered(5.0, asked=10.0, now=10.001)  # cheap: reused for 20 ms
    assert due.reuse(10.011) == pytest.approx(0.01)
    assert due.reuse(10.021) is None
    due.answered(0.3, asked=20.0, now=20.5)  # costly: reused up to the cap
    assert due.reuse(20.6) == pytest.approx(0.2)  # until the job is due
    due.answered(None, asked=30.0, now=31.0)
    assert due.reuse(31.0) == pytest.approx(DUE_REUSE_MAX)
    assert due.reuse(31.0 + DUE_REUSE_MAX) is None


# --- the claim statement, on a real server --------------------------------------------------


def _enqueue(dsn: str, count: int, **options: object) -> list[int]:
    q = pgqueue.Queue(dsn)
    try:
        specs = [q.build("t", {}, **options) for _ in range(count)]  # type: ignore[arg-type]
        return [r.id for r in q.enqueue_many_sync(specs)]
    finally:
        q.close_sync()


def _claim(conn: psycopg.Connection, want: int, starts: list[ClaimKey] | None) -> list:
    return driver_sync.claim_flow(
        PsycopgExecutor(conn), ["default"], want, WORKER, limited=False, starts=starts
    ).jobs


def _key(job: object) -> ClaimKey:
    return ClaimKey(job.priority, job.run_at, job.id)  # type: ignore[attr-defined]


def _entries_walked(conn: psycopg.Connection, start: ClaimKey) -> int:
    """Entries of the claim index one claim of 100 from ``start`` reads (the claim run in
    a transaction rolled back; the server's own count for this transaction)."""
    params = (["default"], 100, WORKER, *start_params([start]))
    # The session's counts not yet reported (earlier transactions' too, since 15): the
    # difference across the claim.
    count = "SELECT pg_stat_get_xact_tuples_returned('pgqueue.jobs_claim_idx'::regclass)"
    with conn.transaction(force_rollback=True):
        before = conn.execute(count).fetchone()
        PsycopgExecutor(conn).fetch(query("claim_jobs"), params)
        after = conn.execute(count).fetchone()
    assert before is not None
    assert after is not None
    return int(after[0]) - int(before[0])


def test_a_cursor_claim_does_not_walk_the_jobs_claimed_while_the_horizon_is_held(dsn):
    _enqueue(dsn, 3_000)
    with (
        psycopg.connect(dsn) as holder,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        # A long transaction: its snapshot keeps every row version the claims leave.
        holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
        starts: list[ClaimKey] | None = None
        for _ in range(28):  # 2,800 claimed and finished, each batch from the last
            jobs = _claim(conn, 100, starts)
            assert len(jobs) == 100
            starts = [max((_key(j) for j in jobs), key=ClaimKey.order)]
            driver_sync.complete_succeeded(
                PsycopgExecutor(conn), [j.id for j in jobs], [None] * 100, [1] * 100
            )
        assert starts is not None
        from_cursor = _entries_walked(conn, starts[0])
        from_head = _entries_walked(conn, HEAD)
        holder.rollback()
    # From the head, the claim reads the 2,800 entries of the jobs claimed before it
    # (none can be removed, or even marked dead, while that snapshot may see them).
    assert from_head >= 2_800 + 100, from_head
    assert from_cursor <= 101, from_cursor


def test_priority_order_is_exact_whatever_the_cursor(dsn):
    first = _enqueue(dsn, 4)
    with psycopg.connect(dsn, autocommit=True) as conn:
        took = _claim(conn, 2, None)
        assert [j.id for j in took] == first[:2]
        cursor = [_key(took[-1])]
        [urgent] = _enqueue(dsn, 1, priority=10)
        [late] = _enqueue(dsn, 1, priority=-5)
        # Higher first (from its head), then the cursor's own priority past the cursor,
        # then lower ones; one at a time, each claim from the last one's job.
        order = []
        while jobs := _claim(conn, 1, cursor):
            order += [j.id for j in jobs]
            cursor = [_key(jobs[-1])]
        assert order == [urgent, *first[2:], late]


def test_a_job_that_lands_behind_the_cursor_is_claimed_by_a_full_scan(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        ahead = _enqueue(dsn, 3)
        took = _claim(conn, 3, None)
        cursor = [_key(took[-1])]
        [behind] = _enqueue(dsn, 1, run_at=datetime.now(UTC) - timedelta(hours=1))
        assert _claim(conn, 10, cursor) == []  # the cursor starts past it
        assert [j.id for j in _claim(conn, 10, None)] == [behind]
    assert [j.id for j in took] == ahead


async def test_a_worker_finds_jobs_behind_its_cursor(queue):
    @queue.task(name="noop")
    async def noop() -> None:
        return None

    async with running_worker(queue, concurrency=4):
        for _ in range(3):
            job = await noop.enqueue()
            await wait_for_job(queue, job.id, timeout=10)
        # Behind every cursor: its run_at is an hour before any job claimed so far.
        old = await noop.with_options(run_at=datetime.now(UTC) - timedelta(hours=1)).enqueue()
        done = await wait_for_job(queue, old.id, timeout=10)
    assert done.state is JobState.SUCCEEDED


async def test_a_worker_warns_when_autovacuum_is_off(queue, dsn):
    # Without VACUUM the dead entries every claim walks are never removed (the machine's
    # own PostgreSQL here runs with autovacuum off altogether).
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgqueue.jobs SET (autovacuum_enabled = off)")
        server_on = conn.execute("SELECT current_setting('autovacuum')::boolean").fetchone()
    with structlog.testing.capture_logs() as logs:
        async with running_worker(queue):
            pass
    [warning] = [e for e in logs if e["event"] == "autovacuum_off"]
    assert warning["log_level"] == "warning"
    assert warning["jobs_table"] is False
    assert server_on is not None
    assert warning["server"] is server_on[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE pgqueue.jobs RESET (autovacuum_enabled)")
    if server_on[0]:
        with structlog.testing.capture_logs() as logs:
            async with running_worker(queue):
                pass
        assert not [e for e in logs if e["event"] == "autovacuum_off"]
