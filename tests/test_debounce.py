"""Debounce: a newer enqueue of the same unique key replaces the pending job's args and
pushes its run_at to ``debounce`` from now; once a worker has claimed the job, the next
enqueue writes a new pending job. One statement on a partial unique index, exact under
real concurrent connections and against a racing claim. Always a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from litestar.testing import AsyncTestClient

import pgqueue
from pgqueue import driver_sync
from pgqueue.executors import PsycopgExecutor
from pgqueue.service import ServiceSettings, create_app

WAIT_S = 30  # the bound of every wait; nothing here takes near it
QUEUE = "indexing"


@pytest.fixture
def reindex(queue):
    @queue.task(name="search.reindex", queue=QUEUE)
    async def reindex(doc: int, text: str = "") -> None: ...

    return reindex


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def pending(dsn: str) -> list[tuple[int, Any]]:
    """(id, args) of the queued, never-claimed jobs."""
    return [
        (r[0], r[1])
        for r in rows(
            dsn,
            "SELECT id, args FROM pgqueue.jobs WHERE state = 'queued' AND worker_id IS NULL "
            "ORDER BY id",
        )
    ]


def claim(
    dsn: str, conn: psycopg.Connection[Any] | None = None, worker: str | None = None
) -> list[int]:
    """What the worker's own claim statement takes now (on ``conn``, in its transaction)."""
    worker = worker or str(uuid.uuid4())
    if conn is not None:
        return [j.id for j in driver_sync.claim(PsycopgExecutor(conn), [QUEUE], 10, worker)]
    with psycopg.connect(dsn, autocommit=True) as own:
        return [j.id for j in driver_sync.claim(PsycopgExecutor(own), [QUEUE], 10, worker)]


def test_a_burst_of_fifty_edits_makes_one_job_with_the_last_args(dsn, queue, reindex):
    debounced = reindex.with_options(debounce=timedelta(seconds=30), unique_key="doc-1")
    results = [debounced.enqueue_sync(doc=1, text=f"edit {n}") for n in range(50)]
    assert len({r.id for r in results}) == 1
    assert [r.duplicate for r in results] == [False] + [True] * 49
    [(job_id, args)] = pending(dsn)
    assert args == {"doc": 1, "text": "edit 49"}
    [(pushed, created)] = rows(
        dsn,
        "SELECT run_at >= now() + interval '29 seconds', created_at < run_at "
        "FROM pgqueue.jobs WHERE id = %s",
        (job_id,),
    )
    assert pushed
    assert created
    job = queue.get_job_sync(job_id)
    assert job is not None
    assert (job.debounce, job.unique_key, job.unique_for) == (30.0, "doc-1", None)
    queue.close_sync()


async def test_the_default_key_is_the_task(dsn, queue, reindex):
    first = await reindex.with_options(debounce=5).enqueue(doc=1)
    second = await queue.enqueue("search.reindex", {"doc": 2}, debounce=5)
    assert second == (first.id, True)
    assert pending(dsn) == [(first.id, {"doc": 2})]
    # Another key debounces on its own.
    other = await reindex.with_options(debounce=5, unique_key="doc-3").enqueue(doc=3)
    assert not other.duplicate


def test_run_at_is_pushed_each_time_and_never_before_a_given_one(dsn, queue, reindex):
    debounced = reindex.with_options(debounce=3600, unique_key="d")
    job_id = debounced.enqueue_sync(doc=1).id
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE pgqueue.jobs SET run_at = now() - interval '1 hour'")
    debounced.enqueue_sync(doc=2)
    [(pushed,)] = rows(
        dsn,
        "SELECT run_at > now() + interval '59 minutes' FROM pgqueue.jobs WHERE id = %s",
        (job_id,),
    )
    assert pushed
    later = reindex.with_options(debounce=1, unique_key="d", delay=timedelta(days=1))
    later.enqueue_sync(doc=3)
    [(delayed,)] = rows(
        dsn,
        "SELECT run_at > now() + interval '23 hours' FROM pgqueue.jobs WHERE id = %s",
        (job_id,),
    )
    assert delayed
    queue.close_sync()


def test_once_claimed_the_next_enqueue_writes_a_new_pending_job(dsn, queue, reindex):
    now = reindex.with_options(debounce=0, unique_key="doc-9")
    first = now.enqueue_sync(doc=9, text="a")
    worker = str(uuid.uuid4())
    assert claim(dsn, worker=worker) == [first.id]
    second = now.enqueue_sync(doc=9, text="b")
    assert not second.duplicate
    assert now.enqueue_sync(doc=9, text="c") == (second.id, True)
    assert pending(dsn) == [(second.id, {"doc": 9, "text": "c"})]
    # The claimed job handed back (as a stopping worker does) does not collide with
    # the pending one, and is not debounced any more.
    with psycopg.connect(dsn, autocommit=True) as conn:
        driver_sync.release(PsycopgExecutor(conn), [first.id], worker)
    assert now.enqueue_sync(doc=9, text="d") == (second.id, True)
    [(state,)] = rows(dsn, "SELECT state::text FROM pgqueue.jobs WHERE id = %s", (first.id,))
    assert state == "queued"
    queue.close_sync()


def test_a_claim_in_progress_makes_the_enqueue_wait_then_write_a_new_job(dsn, queue, reindex):
    now = reindex.with_options(debounce=0, unique_key="raced")
    first = now.enqueue_sync(doc=1, text="a")
    done = threading.Event()
    results: list[pgqueue.EnqueueResult] = []

    def enqueue() -> None:
        results.append(now.enqueue_sync(doc=1, text="b"))
        done.set()

    with psycopg.connect(dsn) as claimer:
        assert claim(dsn, claimer) == [first.id]  # claimed, not committed
        thread = threading.Thread(target=enqueue)
        thread.start()
        # The enqueue waits on the claim's row lock (seen from the server, not timed).
        with psycopg.connect(dsn, autocommit=True) as watcher:
            for _ in range(WAIT_S * 50):
                [(waiting,)] = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).fetchall()
                if waiting:
                    break
                watcher.execute("SELECT pg_sleep(0.02)")
            assert waiting
        assert not done.is_set()
        claimer.commit()
    thread.join(timeout=WAIT_S)
    assert done.is_set()
    assert not results[0].duplicate
    assert pending(dsn) == [(results[0].id, {"doc": 1, "text": "b"})]
    queue.close_sync()


def test_an_update_in_progress_makes_the_claim_skip_the_job(dsn, queue, reindex):
    now = reindex.with_options(debounce=0, unique_key="held")
    first = now.enqueue_sync(doc=1, text="a")
    with psycopg.connect(dsn) as conn:
        assert now.with_options(conn=conn).enqueue_sync(doc=1, text="b") == (first.id, True)
        assert claim(dsn) == []  # locked by the uncommitted update: skipped, not waited on
        conn.commit()
    assert claim(dsn) == [first.id]
    job = queue.get_job_sync(first.id)
    assert job is not None
    assert job.args == {"doc": 1, "text": "b"}  # the claim ran the last args
    queue.close_sync()


def test_twenty_threads_leave_one_pending_job_with_the_last_committed_args(dsn, queue, reindex):
    with psycopg.connect(dsn) as conn:
        # Written inside each enqueue's transaction, after the enqueue: the enqueues
        # queue on the pending job's lock, so this log's order is their commit order.
        conn.execute("CREATE TABLE commits (seq bigserial PRIMARY KEY, n int NOT NULL)")
    barrier = threading.Barrier(20)
    results: list[pgqueue.EnqueueResult] = []
    errors: list[BaseException] = []

    def attempt(n: int) -> None:
        try:
            with psycopg.connect(dsn) as conn:
                debounced = reindex.with_options(conn=conn, debounce=60, unique_key="burst")
                barrier.wait(timeout=WAIT_S)
                results.append(debounced.enqueue_sync(doc=1, text=f"edit {n}"))
                conn.execute("INSERT INTO commits (n) VALUES (%s)", (n,))
                conn.commit()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S * 2)
    assert errors == []
    assert len(results) == 20
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    [(last,)] = rows(dsn, "SELECT n FROM commits ORDER BY seq DESC LIMIT 1")
    assert pending(dsn) == [(results[0].id, {"doc": 1, "text": f"edit {last}"})]
    assert rows(dsn, "SELECT count(*) FROM pgqueue.jobs") == [(1,)]
    queue.close_sync()


async def test_twenty_concurrent_transactions_leave_one_pending_job(dsn, queue, reindex):
    conns = [await asyncpg.connect(dsn) for _ in range(20)]
    await conns[0].execute("CREATE TABLE commits (seq bigserial PRIMARY KEY, n int NOT NULL)")
    try:
        gate = asyncio.Event()
        all_open = asyncio.Event()
        opened = 0

        async def attempt(n: int, conn: asyncpg.Connection) -> pgqueue.EnqueueResult:
            nonlocal opened
            async with conn.transaction():
                await conn.execute("SELECT 1")
                opened += 1
                if opened == len(conns):
                    all_open.set()
                await gate.wait()
                debounced = reindex.with_options(conn=conn, debounce=60, unique_key="burst")
                result = await debounced.enqueue(doc=1, text=f"edit {n}")
                await conn.execute("INSERT INTO commits (n) VALUES ($1)", n)
                return result

        tasks = [asyncio.create_task(attempt(n, c)) for n, c in enumerate(conns)]
        await asyncio.wait_for(all_open.wait(), WAIT_S)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    finally:
        for c in conns:
            await c.close()
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    [(last,)] = rows(dsn, "SELECT n FROM commits ORDER BY seq DESC LIMIT 1")
    assert pending(dsn) == [(results[0].id, {"doc": 1, "text": f"edit {last}"})]


def test_a_rolled_back_enqueue_leaves_the_pending_job_as_it_was(dsn, queue, reindex):
    debounced = reindex.with_options(debounce=60, unique_key="rb")
    with psycopg.connect(dsn) as conn:
        debounced.with_options(conn=conn).enqueue_sync(doc=1, text="rolled back")
        conn.rollback()
    assert pending(dsn) == []
    first = debounced.enqueue_sync(doc=1, text="kept")
    [(run_at,)] = rows(dsn, "SELECT run_at FROM pgqueue.jobs")
    with psycopg.connect(dsn) as conn:
        assert debounced.with_options(conn=conn).enqueue_sync(doc=1, text="no") == (first.id, True)
        conn.rollback()
    assert pending(dsn) == [(first.id, {"doc": 1, "text": "kept"})]
    assert rows(dsn, "SELECT run_at FROM pgqueue.jobs") == [(run_at,)]
    queue.close_sync()


async def test_in_bulk_the_last_row_of_a_key_wins(dsn, queue, reindex):
    debounced = reindex.with_options(debounce=60, unique_key="bulk")
    specs = [debounced.job(doc=1, text=f"v{n}") for n in range(3)] + [reindex.job(doc=2)]
    results = await queue.enqueue_many(specs)
    assert [r.duplicate for r in results] == [False, True, True, False]
    assert len({r.id for r in results[:3]}) == 1
    again = queue.enqueue_many_sync([debounced.job(doc=1, text="v3")])
    assert again == [(results[0].id, True)]
    assert pending(dsn) == [(results[0].id, {"doc": 1, "text": "v3"}), (results[3].id, {"doc": 2})]


async def test_over_http(dsn, queue):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        body = {"task": "search.reindex", "unique_key": "doc-5", "debounce_seconds": 30}
        first = await client.post("/v1/jobs", json=body | {"args": {"doc": 5, "text": "a"}})
        assert first.status_code == 202, first.text
        assert first.json()["debounce_seconds"] == 30
        second = await client.post("/v1/jobs", json=body | {"args": {"doc": 5, "text": "b"}})
        assert second.status_code == 200, second.text
        assert second.json()["id"] == first.json()["id"]
        assert second.json()["args"] == {"doc": 5, "text": "b"}
        batch = await client.post(
            "/v1/jobs/batch", json={"jobs": [body | {"args": {"doc": 5, "text": "c"}}]}
        )
        assert batch.json()["jobs"] == [{"id": first.json()["id"], "duplicate": True}]
        for bad in ({"debounce_seconds": -1}, {"unique_for_seconds": 5}):
            refused = await client.post("/v1/jobs", json=body | bad)
            assert refused.status_code in {400, 422}, refused.text
    assert pending(dsn) == [(first.json()["id"], {"doc": 5, "text": "c"})]
