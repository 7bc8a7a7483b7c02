"""Retention: finished jobs are pruned once older than their state's retention, by one
worker at a time, by ``Queue.prune`` or from SQL; nothing unfinished is ever touched."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import asyncpg
import psycopg
import pytest

import pgqueue
from pgqueue import Retention, driver_sync
from pgqueue.executors import PsycopgExecutor
from pgqueue.locks import PRUNE
from pgqueue.retention import PRUNE_BATCH, parse_duration
from pgqueue.sql import query
from pgqueue.testing import running_worker
from pgqueue.worker.pruning import Pruner

HOUR = timedelta(hours=1)


def _jobs_finished_ago(
    dsn: str, state: str, age: timedelta, count: int = 1, queue: str = "default"
) -> list[int]:
    """``count`` jobs in ``state``, finished ``age`` ago (a queued or running one just
    as old by its dates, which must never matter)."""
    q = pgqueue.Queue(dsn)
    try:
        specs = [q.build("t", {}, queue=queue) for _ in range(count)]
        ids = [r.id for r in q.enqueue_many_sync(specs)]
    finally:
        q.close_sync()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgqueue.jobs SET created_at = now() - %s, run_at = now() - %s "
            "WHERE id = ANY(%s)",
            (age, age, ids),
        )
        if state == "queued":
            return ids
        # Through the state machine, as a worker would: claimed, then finished.
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now() - %s "
            "WHERE id = ANY(%s)",
            (age, ids),
        )
        if state != "running":
            conn.execute(
                "UPDATE pgqueue.jobs SET state = %s, finished_at = now() - %s WHERE id = ANY(%s)",
                (state, age, ids),
            )
    return ids


def _remaining(dsn: str, ids: list[int]) -> set[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id FROM pgqueue.jobs WHERE id = ANY(%s)", (ids,)).fetchall()
    return {r[0] for r in rows}


def test_prune_jobs_deletes_only_finished_jobs_past_their_states_retention(dsn):
    old_ok = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR)
    new_ok = _jobs_finished_ago(dsn, "succeeded", timedelta(minutes=30))
    old_failed = _jobs_finished_ago(dsn, "failed", 2 * HOUR)
    older_failed = _jobs_finished_ago(dsn, "failed", 4 * HOUR)
    old_cancelled = _jobs_finished_ago(dsn, "cancelled", 100 * HOUR)
    old_queued = _jobs_finished_ago(dsn, "queued", 100 * HOUR)
    old_running = _jobs_finished_ago(dsn, "running", 100 * HOUR)
    everything = old_ok + new_ok + old_failed + older_failed + old_cancelled
    everything += old_queued + old_running
    with psycopg.connect(dsn, autocommit=True) as conn:
        # From psql: succeeded kept an hour, failed three, cancelled forever.
        gone = conn.execute(
            "SELECT pgqueue.prune_jobs(interval '1 hour', interval '3 hours', NULL)"
        ).fetchone()
    assert gone == (2,)
    assert _remaining(dsn, everything) == set(
        new_ok + old_failed + old_cancelled + old_queued + old_running
    )


def test_prune_jobs_takes_at_most_max_rows_per_call(dsn):
    ids = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR, count=5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        calls = [
            conn.execute("SELECT pgqueue.prune_jobs('1 hour', NULL, NULL, 2)").fetchone()[0]
            for _ in range(4)
        ]
    assert calls == [2, 2, 1, 0]
    assert _remaining(dsn, ids) == set()


async def test_queue_prune_works_off_more_than_a_batch(dsn, queue):
    ids = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR, count=PRUNE_BATCH + 7)
    kept = _jobs_finished_ago(dsn, "failed", 2 * HOUR)
    gone = await queue.prune(Retention(succeeded=HOUR, failed=None, cancelled=None))
    assert gone == PRUNE_BATCH + 7
    assert _remaining(dsn, ids + kept) == set(kept)
    assert await queue.prune(Retention(succeeded=HOUR)) == 0  # nothing older left


def test_queue_prune_sync_with_the_default_retention(dsn):
    week_old = _jobs_finished_ago(dsn, "succeeded", timedelta(days=8))
    failed_week_old = _jobs_finished_ago(dsn, "failed", timedelta(days=8))
    failed_month_old = _jobs_finished_ago(dsn, "failed", timedelta(days=31))
    queue = pgqueue.Queue(dsn)
    try:
        assert queue.prune_sync() == 2  # 7 days for succeeded, 30 for failed
    finally:
        queue.close_sync()
    assert _remaining(dsn, week_old + failed_week_old + failed_month_old) == set(failed_week_old)


async def test_a_pruned_jobs_idempotency_key_is_free_again(dsn, queue):
    first = await queue.enqueue("t", {}, idempotency_key="report-2026-11")
    assert (await queue.enqueue("t", {}, idempotency_key="report-2026-11")).duplicate
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.jobs SET state = 'running' WHERE id = %s", (first.id,))
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'succeeded', finished_at = now() - interval "
            "'8 days' WHERE id = %s",
            (first.id,),
        )
    assert await queue.prune() == 1
    again = await queue.enqueue("t", {}, idempotency_key="report-2026-11")
    assert not again.duplicate
    assert again.id != first.id


async def test_a_worker_prunes_finished_jobs_past_their_retention(dsn, queue):
    ran = asyncio.Event()

    @queue.task(name="quick")
    async def quick() -> int:
        ran.set()
        return 1

    job_id = (await quick.enqueue()).id
    fast = Retention(succeeded=timedelta(0), failed=None, cancelled=None)
    async with running_worker(queue, retention=fast, prune_interval=0.05) as worker:
        await asyncio.wait_for(ran.wait(), 10)
        deadline = time.monotonic() + 30
        while await queue.get_job(job_id) is not None:
            assert time.monotonic() < deadline, "the worker never pruned the finished job"
            await asyncio.sleep(0.05)
    assert worker.pruner is not None
    assert worker.pruner.pruned >= 1


async def test_a_worker_keeping_everything_prunes_nothing(dsn, queue):
    old = _jobs_finished_ago(dsn, "succeeded", timedelta(days=365))
    async with running_worker(queue, retention=Retention.forever(), prune_interval=0.01) as worker:
        assert worker.pruner is None  # no pruning task at all
    async with running_worker(queue, retention=None, prune_interval=0.01) as worker:
        assert worker.pruner is None
    assert _remaining(dsn, old) == set(old)


async def test_one_worker_prunes_at_a_time(dsn, queue):
    ids = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR, count=3)
    retention = Retention(succeeded=HOUR)
    with psycopg.connect(dsn) as other:  # another worker, mid-prune
        other.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE.key,))
        with psycopg.connect(dsn, autocommit=True) as conn:
            ex = PsycopgExecutor(conn)
            params = (*retention.params(10), PRUNE.key)
            assert ex.fetch(query("prune_jobs_elected"), params) == [(None,)]
        async with running_worker(queue, retention=retention, prune_interval=3600) as worker:
            assert worker.pruner is not None
            assert await worker.pruner.prune_round() == 0  # not elected: stands aside
        assert _remaining(dsn, ids) == set(ids)
        other.rollback()
    async with running_worker(queue, retention=retention, prune_interval=3600) as worker:
        assert worker.pruner is not None
        assert await worker.pruner.prune_round() == 3
    # The election is one statement: nothing is left holding the lock.
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone() == (0,)


async def test_a_worker_prunes_only_the_queues_it_serves(dsn):
    """A worker's retention is its own setting: a worker serving "reports" with a short
    retention must not prune the jobs of "invoices", which other workers serve and keep
    longer. pgqueue.prune_jobs() without queues still prunes them all."""
    mine = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR, count=2, queue="reports")
    theirs = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR, count=2, queue="invoices")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        pruner = Pruner(
            pool,
            Retention(succeeded=HOUR),
            interval=3600,
            stopping=lambda: False,
            queues=["reports"],
        )
        assert await pruner.prune_round() == 2
    finally:
        await pool.close()
    assert _remaining(dsn, mine) == set()
    assert _remaining(dsn, theirs) == set(theirs)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pgqueue.prune_jobs('1 hour', NULL, NULL)").fetchone()
    assert row == (2,)
    assert _remaining(dsn, theirs) == set()


def test_retention_and_durations_keep_the_hundred_year_bound():
    with pytest.raises(ValueError, match="100 years"):
        Retention(succeeded=timedelta(days=365 * 101))
    with pytest.raises(ValueError, match="100 years"):
        parse_duration("100000000d")


async def test_a_prune_round_survives_a_database_error(dsn):
    """Pruning can always wait: an error is logged and the round ends; the next works."""
    ids = _jobs_finished_ago(dsn, "succeeded", 2 * HOUR)
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, server_settings={"lock_timeout": "1"}
    )
    blocker = await asyncpg.connect(dsn)
    try:
        await blocker.execute("BEGIN; LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
        pruner = Pruner(pool, Retention(succeeded=HOUR), interval=3600, stopping=lambda: False)
        assert await pruner.prune_round() == 0  # lock_timeout: logged, not raised
        await blocker.execute("ROLLBACK")
        assert await pruner.prune_round() == 1
    finally:
        await blocker.close()
        await pool.close()
    assert _remaining(dsn, ids) == set()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        ("0", timedelta(0)),
        (" Forever ", None),
    ],
)
def test_durations_as_people_write_them(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "-1d", "7 days", "1e9999d", "1y", "d"])
def test_a_bad_duration_is_a_clear_error(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_retention_refuses_negative_or_untyped_values():
    with pytest.raises(ValueError, match="succeeded"):
        Retention(succeeded=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="failed"):
        Retention(failed=30)  # type: ignore[arg-type]
    assert not Retention.forever().prunes
    assert Retention(succeeded=None, failed=None, cancelled=timedelta(days=1)).prunes


def test_driver_prune_counts_the_batch(dsn):
    ids = _jobs_finished_ago(dsn, "cancelled", 2 * HOUR, count=3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        params = Retention(succeeded=None, failed=None, cancelled=HOUR).params(2)
        assert driver_sync.prune(PsycopgExecutor(conn), params) == 2
    assert len(_remaining(dsn, ids)) == 1
