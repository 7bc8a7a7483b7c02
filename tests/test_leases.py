"""Leases, heartbeats and rescue: a committed job runs to a recorded end whatever dies,
and a worker that comes back from the dead never writes over the job's new owner."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid

import psycopg
import pytest
from workerproc import WorkerProcess, wait_for_sql

import pgqueue
from pgqueue import JobState, driver
from pgqueue.dberrors import connection_failed
from pgqueue.executors import PsycopgExecutor
from pgqueue.sql import query
from pgqueue.testing import running_worker, wait_for_job


def _job_row(dsn: str, job_id: int) -> tuple:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT state::text, attempts, result, errors FROM pgqueue.jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        assert row is not None
        return row


async def test_a_worker_registers_heartbeats_and_leaves(dsn):
    queue = pgqueue.Queue(dsn)

    @queue.task(name="t", queue="reg")
    async def t() -> None: ...

    async with running_worker(queue, concurrency=3, lease=0.5) as worker:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute(
                "SELECT id::text, pid, queues, concurrency, started_at FROM pgqueue.workers"
            )
            rows = await cur.fetchall()
            assert len(rows) == 1
            worker_id, pid, queues, concurrency, started_at = rows[0]
            assert worker_id == worker.worker_id
            assert (queues, concurrency) == (["reg"], 3)
            assert pid > 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # beats every lease/5 = 0.1 s
                cur = await conn.execute("SELECT last_heartbeat FROM pgqueue.workers")
                row = await cur.fetchone()
                if row and row[0] > started_at:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the heartbeat never advanced")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM pgqueue.workers")
        assert await cur.fetchone() == (0,)
    await queue.close()


async def test_a_slow_job_on_a_live_worker_is_never_rescued(dsn):
    queue = pgqueue.Queue(dsn)

    @queue.task(name="slow_but_alive")
    async def slow_but_alive() -> str:
        await asyncio.sleep(2.0)  # four leases long
        return "finished"

    async with running_worker(queue, lease=0.5) as worker:
        job = await wait_for_job(queue, (await slow_but_alive.enqueue()).id, timeout=20)
        assert worker.heartbeat is not None
        assert worker.heartbeat.beats >= 10  # it was beating, and rescuing, all along
    assert (job.state, job.attempts, job.errors, job.result) == (
        JobState.SUCCEEDED,
        1,
        [],
        "finished",
    )
    await queue.close()


def test_the_jobs_of_a_killed_worker_are_rescued_after_the_lease(dsn):
    queue = pgqueue.Queue(dsn)
    retry_id = queue.enqueue_sync("slow.nap", {"seconds": 60}, queue="slow").id
    last_id = queue.enqueue_sync("slow.nap", {"seconds": 60}, queue="slow", max_attempts=1).id
    doomed = WorkerProcess("slow_app:queue", dsn, "--lease", "1")
    # The rescuer serves another queue, so that the rescued jobs stay visible as queued.
    rescuer = WorkerProcess("slow_app:queue", dsn, "--lease", "1", "--queue", "elsewhere")
    try:
        doomed.wait_for_event("job_started", count=2)
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        wait_for_sql(
            dsn,
            f"SELECT state::text FROM pgqueue.jobs WHERE id = {retry_id}",
            "queued",
            timeout=30,
        )
        rescuer.wait_for_event("jobs_rescued")
        assert rescuer.stop() == 0
    finally:
        doomed.close()
        rescuer.close()
        queue.close_sync()
    state, attempts, _, errors = _job_row(dsn, retry_id)
    assert (state, attempts) == ("queued", 1)
    assert errors[-1]["type"] == "pgqueue.WorkerLost"
    assert errors[-1]["attempt"] == 1
    state, attempts, _, errors = _job_row(dsn, last_id)
    assert (state, attempts) == ("failed", 1)  # that was its only attempt
    assert errors[-1]["type"] == "pgqueue.WorkerLost"
    with psycopg.connect(dsn) as conn:  # the dead worker's entry is gone, the live one left
        assert conn.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)


def test_a_frozen_worker_that_wakes_does_not_write_over_the_new_owner(dsn):
    queue = pgqueue.Queue(dsn)
    job_id = queue.enqueue_sync("slow.whoami", {"seconds": 3}, queue="slow").id
    frozen = WorkerProcess("slow_app:queue", dsn, "--lease", "1.5")
    heir = None
    try:
        frozen.wait_for_event("job_started")
        frozen.signal(signal.SIGSTOP)  # cut off: no heartbeat, no progress
        heir = WorkerProcess("slow_app:queue", dsn, "--lease", "1.5")
        heir.wait_for_event("job_started", timeout=30)  # rescued, then claimed anew
        frozen.signal(signal.SIGCONT)  # its task finishes at once: a stale outcome
        frozen.wait_for_event("worker_rejoined", timeout=30)
        heir.wait_for_event("job_succeeded", timeout=30)
        assert frozen.stop() == 0
        assert heir.stop() == 0
        state, attempts, result, errors = _job_row(dsn, job_id)
        assert (state, attempts) == ("succeeded", 2)
        assert result == heir.pid  # the heir's outcome, never the frozen worker's
        assert [e["type"] for e in errors] == ["pgqueue.WorkerLost"]
        events = [e["event"] for e in frozen.events()]
        assert "worker_declared_dead" in events
    finally:
        frozen.signal(signal.SIGCONT)
        frozen.close()
        if heir is not None:
            heir.close()
        queue.close_sync()


def _job_held_by_a_dead_worker(dsn: str) -> tuple[int, str]:
    """A running job (attempt 1) whose worker's last heartbeat is an hour old."""
    job_id = pgqueue.Queue(dsn).enqueue_sync("lost.task", {}).id
    worker_id = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, last_heartbeat) "
            "VALUES (%s, 'elsewhere', 1, '{}', 1, now() - interval '1 hour')",
            (worker_id,),
        )
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now(), "
            "worker_id = %s WHERE id = %s",
            (worker_id, job_id),
        )
    return job_id, worker_id


def _rescue(dsn: str, lease: float = 1.0) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.RawCursor(conn) as cur:
        return [r[0] for r in cur.execute(query("rescue_jobs"), (lease,)).fetchall()]


def test_one_rescuer_at_a_time_and_the_election_ends_with_its_statement(dsn):
    job_id, worker_id = _job_held_by_a_dead_worker(dsn)
    key = re.search(r"pg_try_advisory_xact_lock\((\d+)\)", query("rescue_jobs"))
    assert key is not None
    with psycopg.connect(dsn) as rescuer:  # another worker, mid-rescue
        rescuer.execute("SELECT pg_advisory_xact_lock(%s)", (int(key[1]),))
        assert _rescue(dsn) == []  # not elected: touches nothing
        assert _job_row(dsn, job_id)[0] == "running"
        rescuer.rollback()
    assert _rescue(dsn) == [job_id]
    with psycopg.connect(dsn) as conn:
        # The dead worker's entry went with its job, and the election left no lock behind.
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.workers WHERE id = %s", (worker_id,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        ).fetchone() == (0,)
    assert _job_row(dsn, job_id)[:2] == ("queued", 1)


def test_a_completion_never_committed_is_ended_after_the_lease_and_its_job_rescued(dsn):
    """A transactional task's worker froze between marking its job succeeded and COMMIT:
    the job's row is locked, so no rescue could take it, until the server ends the idle
    transaction (the completing statement limits it to the lease)."""
    job_id, worker_id = _job_held_by_a_dead_worker(dsn)
    frozen = psycopg.connect(dsn)
    try:
        done = driver.complete_in_transaction_sync(
            PsycopgExecutor(frozen), job_id, 1, None, worker_id=worker_id, idle_limit=0.5
        )
        assert done
        assert _rescue(dsn) == []  # the row is locked by the uncommitted completion
        # The client never sends COMMIT; the server gives up on it.
        wait_for_sql(
            dsn,
            f"SELECT count(*) FROM pg_stat_activity WHERE pid = {frozen.info.backend_pid}",
            0,
            timeout=30,
        )
        assert _rescue(dsn) == [job_id]
        state, attempts, result, errors = _job_row(dsn, job_id)
        assert (state, attempts, result) == ("queued", 1, None)
        assert [e["type"] for e in errors] == ["pgqueue.WorkerLost"]
        with pytest.raises(psycopg.Error) as woke:
            frozen.commit()  # when it wakes, its success is gone with its session
        assert connection_failed(woke.value)  # the worker takes it as an unknown outcome
    finally:
        frozen.close()


def test_the_idle_limit_ends_with_the_completing_transaction(dsn):
    job_id, worker_id = _job_held_by_a_dead_worker(dsn)
    with psycopg.connect(dsn) as conn:
        assert driver.complete_in_transaction_sync(
            PsycopgExecutor(conn), job_id, 1, None, worker_id=worker_id, idle_limit=0.2
        )
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("200ms",)
        conn.commit()
        # Back to the session's own setting: a pooled connection keeps no limit.
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("0",)
        conn.rollback()
    assert _job_row(dsn, job_id)[0] == "succeeded"
