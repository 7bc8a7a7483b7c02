"""Database errors short of a restart: statement timeouts on the worker's claims and
completion writes, errors the server rolls back (deadlock, serialization failure, lock
and statement timeouts) on completion writes, the Queue's pool exhausted, and a
connection lost while an enqueue was in flight. Retried where that is safe, surfaced
as a typed error where it is not; never a job left running without a live worker, and
no outcome lost."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING
from urllib.parse import quote

import psycopg
import pytest
from faultkit import WORKERS, Figures, check_invariants, in_thread, prepare, spawn, stop_all
from workerproc import wait_for_sql

import pgqueue
from pgqueue import JobState, RetryPolicy
from pgqueue.testing import running_worker, wait_for_job

if TYPE_CHECKING:
    from collections.abc import Callable

FAST_RETRY = RetryPolicy(base=0.05, factor=2.0, max_delay=0.2, jitter=0.5)


def with_options(dsn: str, options: str) -> str:
    """``dsn`` (a URL) with libpq ``options``, which both drivers pass to the server."""
    return f"{dsn}{'&' if '?' in dsn else '?'}options={quote(options)}"


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def scalar(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return int(row[0])


def events(worker, name: str) -> list[dict]:
    return [e for e in worker.events() if e.get("event") == name]


# --- (a) statement timeouts on claims and completion writes ----------------------------


@pytest.mark.slow
def test_statement_timeouts_on_claims_and_completions_are_waited_out(dsn, capsys):
    """Workers whose statements time out after 200 ms while the test holds the jobs
    table locked: their claims fail and are retried, the outcomes of the jobs that
    finish meanwhile are written once the lock is gone, and nothing is lost."""
    figures = Figures(jobs=3_000)
    prepare(dsn, figures.jobs)
    timeout_dsn = with_options(dsn, "-c statement_timeout=200")
    # The ledger (fault_app's own writes) is not locked and needs no timeout.
    workers = [spawn(timeout_dsn, ledger_dsn=dsn) for _ in range(WORKERS)]
    began = time.monotonic()
    try:
        wait_until(
            "work under way",
            lambda: (
                scalar(dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'") >= 200
            ),
        )
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
            # Held until every worker's claims have timed out and some completion
            # write has too (jobs running when the lock was taken finished meanwhile).
            wait_until(
                "claims and completion writes timed out",
                lambda: (
                    all(events(w, "claim_failed") for w in workers)
                    and any(
                        e.get("sqlstate") == "57014"
                        for w in workers
                        for e in events(w, "completion_write_failed")
                    )
                ),
            )
            locker.rollback()
        # Right away: every running job belongs to a live, registered worker.
        assert (
            scalar(
                dsn,
                "SELECT count(*) FROM pgqueue.jobs j WHERE j.state = 'running' AND NOT EXISTS "
                "(SELECT FROM pgqueue.workers w WHERE w.id = j.worker_id)",
            )
            == 0
        )
        wait_for_sql(
            dsn,
            "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running')",
            0,
            timeout=120,
        )
        figures.seconds = time.monotonic() - began
        seen = Counter(e["event"] for w in workers for e in w.events())
        stop_all(workers)
    finally:
        for w in workers:
            w.close()
    check_invariants(dsn, figures)
    # Retried, never given up on: no outcome dropped, nobody declared dead.
    assert seen["completion_write_rejected"] == 0
    assert seen["completion_outcomes_dropped"] == 0
    assert seen["worker_declared_dead"] == 0
    figures.notes.append(
        f"claims timed out {seen['claim_failed']}, "
        f"completion writes timed out {seen['completion_write_failed']}"
    )
    with capsys.disabled():
        print("\n" + figures.report("statement timeouts under a table lock"))


# --- (b) errors the server rolls back, on completion writes ----------------------------


INJECTED_FAILURES = 3


@pytest.mark.parametrize(
    "errcode",
    ["deadlock_detected", "serialization_failure", "lock_not_available", "query_canceled"],
)
async def test_completion_writes_rolled_back_by_the_server_are_retried(dsn, errcode):
    """A trigger makes the first completion writes fail with a real server error. The
    completer writes the same outcomes again: every job runs exactly as often as its
    task asks (no outcome dropped, so no job handed back and run again), and every
    failed attempt's error entry is there."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A sequence counts the injected failures: it is not rolled back with them.
        conn.execute("CREATE SEQUENCE injected_failures")
        conn.execute(
            f"""
            CREATE FUNCTION fail_completion() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('injected_failures') <= {INJECTED_FAILURES} THEN
                    RAISE EXCEPTION 'injected by the test' USING ERRCODE = TG_ARGV[0];
                END IF;
                RETURN NEW;
            END $$
            """
        )
        conn.execute(
            "CREATE TRIGGER fail_completion BEFORE UPDATE ON pgqueue.jobs FOR EACH ROW "
            "WHEN (OLD.state = 'running' AND NEW.state <> 'running') "
            f"EXECUTE FUNCTION fail_completion('{errcode}')"
        )
    queue = pgqueue.Queue(dsn)
    runs: Counter[int] = Counter()

    @queue.task(name="steady")
    async def steady(n: int) -> int:
        runs[n] += 1
        return n

    @queue.task(name="flaky", retry=FAST_RETRY)
    async def flaky(n: int) -> int:
        runs[n] += 1
        if runs[n] == 1:
            raise RuntimeError("first attempt fails")
        return n

    try:
        async with running_worker(queue, concurrency=4, poll_interval=0.2):
            ids = [(await steady.enqueue(n=n)).id for n in range(10)]
            ids += [(await flaky.enqueue(n=n)).id for n in range(100, 110)]
            jobs = [await wait_for_job(queue, job_id, timeout=30) for job_id in ids]
    finally:
        await queue.close()
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 20
    assert runs == Counter(dict.fromkeys(range(10), 1) | dict.fromkeys(range(100, 110), 2))
    assert [len(j.errors) for j in jobs] == [0] * 10 + [1] * 10
    assert [j.attempts for j in jobs] == [1] * 10 + [2] * 10
    assert scalar(dsn, "SELECT last_value FROM injected_failures") > INJECTED_FAILURES


# --- (c) the Queue's pool exhausted ----------------------------------------------------


# Enqueues waiting on the test's lock on pgqueue.jobs.
BLOCKED_INSERTS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO pgqueue.jobs%'"
)


def test_sync_enqueue_on_an_exhausted_pool_times_out_and_writes_nothing(dsn):
    queue = pgqueue.Queue(dsn, pool_size=2, pool_timeout=0.5)
    results: list[pgqueue.EnqueueResult] = []
    try:
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
            # Both connections of the pool held by enqueues waiting on the lock.
            holders = [
                threading.Thread(target=lambda: results.append(queue.enqueue_sync("t")))
                for _ in range(2)
            ]
            for th in holders:
                th.start()
            wait_for_sql(dsn, BLOCKED_INSERTS, 2, timeout=30)
            began = time.monotonic()
            with pytest.raises(pgqueue.PoolTimeoutError, match="busy"):
                queue.enqueue_sync("t", {"third": True})
            assert time.monotonic() - began >= 0.45  # it waited for the timeout
            locker.rollback()
        for th in holders:
            th.join(30)
    finally:
        queue.close_sync()
    assert len(results) == 2
    assert scalar(dsn, "SELECT count(*) FROM pgqueue.jobs") == 2
    assert scalar(dsn, "SELECT count(*) FROM pgqueue.jobs WHERE args ? 'third'") == 0


async def test_async_enqueue_on_an_exhausted_pool_times_out_and_writes_nothing(dsn):
    queue = pgqueue.Queue(dsn, pool_size=2, pool_timeout=0.5)
    try:
        locker = await psycopg.AsyncConnection.connect(dsn)
        async with locker:
            await locker.execute("LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
            holders = [asyncio.create_task(queue.enqueue("t")) for _ in range(2)]
            await asyncio.to_thread(wait_for_sql, dsn, BLOCKED_INSERTS, 2, 30)
            with pytest.raises(pgqueue.PoolTimeoutError, match="busy"):
                await queue.enqueue("t", {"third": True})
            await locker.rollback()
        results = await asyncio.wait_for(asyncio.gather(*holders), 30)
    finally:
        await queue.close()
    assert len({r.id for r in results}) == 2
    assert scalar(dsn, "SELECT count(*) FROM pgqueue.jobs") == 2


def test_pool_timeout_must_be_positive():
    with pytest.raises(ValueError, match="pool_timeout"):
        pgqueue.Queue("postgresql://unused", pool_timeout=0)


# --- (d) a connection lost while an enqueue was in flight ------------------------------


def _terminate_blocked_insert(dsn: str) -> None:
    """The enqueue waiting on the test's lock loses its connection mid-statement."""
    wait_for_sql(dsn, BLOCKED_INSERTS, 1, timeout=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query LIKE '%INSERT INTO pgqueue.jobs%'"
        )


def test_a_connection_lost_mid_enqueue_is_surfaced_or_retried_with_a_key(dsn):
    queue = pgqueue.Queue(dsn)
    outcome: dict[str, object] = {}

    call = functools.partial(in_thread, outcome)

    try:
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
            # No key: whether it committed cannot be known, and the caller is told so.
            th = call("plain", lambda: queue.enqueue_sync("t", {"n": 1}))
            _terminate_blocked_insert(dsn)
            th.join(30)
            # A key: enqueueing again is safe, so the Queue does it by itself; the
            # retry waits on the lock like the first try.
            th = call("keyed", lambda: queue.enqueue_sync("t", {"n": 2}, idempotency_key="k2"))
            _terminate_blocked_insert(dsn)
            wait_for_sql(dsn, BLOCKED_INSERTS, 1, timeout=30)
            locker.rollback()
            th.join(30)
        # The caller's own connection: never retried, the driver's error as it is.
        with psycopg.connect(dsn) as locker, psycopg.connect(dsn) as mine:
            locker.execute("LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
            th = call("caller", lambda: queue.enqueue_sync("t", {"n": 3}, conn=mine))
            _terminate_blocked_insert(dsn)
            th.join(30)
            locker.rollback()
    finally:
        queue.close_sync()
    assert isinstance(outcome["plain"], pgqueue.OutcomeUnknownError), outcome["plain"]
    assert isinstance(outcome["keyed"], pgqueue.EnqueueResult), outcome["keyed"]
    assert outcome["keyed"].duplicate is False
    assert isinstance(outcome["caller"], psycopg.OperationalError), outcome["caller"]
    assert not isinstance(outcome["caller"], pgqueue.PgQueueError)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT args->>'n', idempotency_key FROM pgqueue.jobs").fetchall()
    assert rows == [("2", "k2")]


async def test_an_async_connection_lost_mid_enqueue_is_surfaced_or_retried(dsn):
    queue = pgqueue.Queue(dsn)
    try:
        locker = await psycopg.AsyncConnection.connect(dsn)
        async with locker:
            await locker.execute("LOCK TABLE pgqueue.jobs IN ACCESS EXCLUSIVE MODE")
            plain = asyncio.create_task(queue.enqueue("t", {"n": 1}))
            await asyncio.to_thread(_terminate_blocked_insert, dsn)
            with pytest.raises(pgqueue.OutcomeUnknownError, match="may have committed or not"):
                await asyncio.wait_for(plain, 30)
            keyed = asyncio.create_task(
                queue.enqueue_many([queue.build("t", {"n": 2}, idempotency_key="k2")])
            )
            await asyncio.to_thread(_terminate_blocked_insert, dsn)
            await asyncio.to_thread(wait_for_sql, dsn, BLOCKED_INSERTS, 1, 30)
            await locker.rollback()
            [result] = await asyncio.wait_for(keyed, 30)
        # The Queue's connection that was lost does not linger: the next call works.
        again = await queue.enqueue("t", {"n": 3})
    finally:
        await queue.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, args->>'n' FROM pgqueue.jobs ORDER BY id").fetchall()
    assert rows == [(result.id, "2"), (again.id, "3")]
