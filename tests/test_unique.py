"""Unique windows (``unique_for``): another enqueue of the same unique key within the
window returns the first job; after it, a new job is written. Enforced by
pgqueue.unique_windows and one statement, exact under real concurrent connections.
Always against a real PostgreSQL; window expiry is waited for on the database's clock
or set by SQL, never timed."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from litestar.testing import AsyncTestClient

import pgqueue
from pgqueue import InvalidJobError
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key
from pgqueue.validation import default_unique_key

WAIT_S = 30  # the bound of every wait; nothing here takes near it


@pytest.fixture
def report(queue):
    @queue.task(name="report.build", queue="reports")
    async def report(customer: int, month: str = "2026-11") -> None: ...

    return report


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def job_ids(dsn: str) -> list[int]:
    return [r[0] for r in rows(dsn, "SELECT id FROM pgqueue.jobs ORDER BY id")]


def windows(dsn: str) -> list[tuple[str, int]]:
    return [
        (r[0], r[1])
        for r in rows(dsn, "SELECT unique_key, job_id FROM pgqueue.unique_windows ORDER BY 1")
    ]


def wait_for_expiry(dsn: str, key: str) -> None:
    """Until the database's clock is past the window of ``key`` (bounded)."""
    deadline = time.monotonic() + WAIT_S
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT expires_at <= statement_timestamp() FROM pgqueue.unique_windows "
                "WHERE unique_key = %s",
                (key,),
            ).fetchone()
            assert row is not None
            if row[0]:
                return
            conn.execute("SELECT pg_sleep(0.02)")
    pytest.fail(f"the window of {key!r} did not expire within {WAIT_S} s")


# --- the window ----------------------------------------------------------------------


async def test_within_the_window_the_first_job_is_returned(dsn, queue, report):
    once = report.with_options(unique_for=timedelta(minutes=5))
    first = await once.enqueue(customer=1, month="2026-11")
    assert not first.duplicate
    # The same call, however its keyword arguments are written, on either face.
    assert await once.enqueue(month="2026-11", customer=1) == (first.id, True)
    assert once.enqueue_sync(customer=1, month="2026-11") == (first.id, True)
    by_name = await queue.enqueue(
        "report.build", {"month": "2026-11", "customer": 1}, unique_for=300
    )
    assert by_name == (first.id, True)
    # Other args are another key (the default key is the task and its args as stored:
    # a default left out is not an argument).
    other = await once.enqueue(customer=2)
    assert not other.duplicate
    assert not (await once.enqueue(customer=1)).duplicate
    assert len(job_ids(dsn)) == 3
    job = await queue.get_job(first.id)
    assert job is not None
    assert job.unique_for == 300.0
    assert job.unique_key == default_unique_key("report.build", '{"month":"2026-11","customer":1}')
    assert job.unique_key.startswith("report.build:")


async def test_an_explicit_key_is_shared_whatever_the_args(dsn, queue, report):
    keyed = report.with_options(unique_for=60, unique_key="customer-7")
    first = await keyed.enqueue(customer=7)
    assert await keyed.enqueue(customer=7, month="2026-12") == (first.id, True)
    job = await queue.get_job(first.id)
    assert job is not None
    assert job.args == {"customer": 7}  # the first job, as it was enqueued
    assert job_ids(dsn) == [first.id]


def test_after_the_window_a_new_job_is_written(dsn, queue, report):
    short = report.with_options(unique_for=0.2, unique_key="short")
    first = short.enqueue_sync(customer=1)
    wait_for_expiry(dsn, "short")
    second = short.enqueue_sync(customer=1)
    assert not second.duplicate
    assert second.id != first.id
    assert short.enqueue_sync(customer=1) == (second.id, True)  # a new window opened
    assert windows(dsn) == [("short", second.id)]
    queue.close_sync()


def test_a_window_ended_by_sql_is_taken_over(dsn, queue, report):
    long = report.with_options(unique_for=timedelta(days=1), unique_key="long")
    first = long.enqueue_sync(customer=1)
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE pgqueue.unique_windows SET expires_at = now() - interval '1 second' "
            "WHERE unique_key = 'long'"
        )
    second = long.enqueue_sync(customer=1)
    assert not second.duplicate
    assert job_ids(dsn) == [first.id, second.id]
    queue.close_sync()


def test_the_window_holds_whatever_becomes_of_the_job_until_it_is_deleted(dsn, queue, report):
    keyed = report.with_options(unique_for=3600, unique_key="k")
    first = keyed.enqueue_sync(customer=1)
    queue.cancel_sync(first.id)
    assert keyed.enqueue_sync(customer=1) == (first.id, True)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (first.id,))
    assert windows(dsn) == []  # the deleted job's window went with it
    fresh = keyed.enqueue_sync(customer=1)
    assert not fresh.duplicate
    assert windows(dsn) == [("k", fresh.id)]
    queue.close_sync()


# --- concurrency ---------------------------------------------------------------------


async def test_twenty_concurrent_transactions_make_one_job(dsn, queue, report):
    # Every transaction is open (its snapshot can be taken before any other commits)
    # when all 20 enqueue at once: the losers see the winner only by running again.
    conns = [await asyncpg.connect(dsn) for _ in range(20)]
    try:
        gate = asyncio.Event()
        all_open = asyncio.Event()
        opened = 0

        async def attempt(conn: asyncpg.Connection) -> pgqueue.EnqueueResult:
            nonlocal opened
            async with conn.transaction():
                await conn.execute("SELECT 1")
                opened += 1
                if opened == len(conns):
                    all_open.set()
                await gate.wait()
                once = report.with_options(conn=conn, unique_for=60, unique_key="race")
                return await once.enqueue(customer=1)

        pending = [asyncio.create_task(attempt(c)) for c in conns]
        await asyncio.wait_for(all_open.wait(), WAIT_S)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*pending), WAIT_S)
    finally:
        for c in conns:
            await c.close()
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert job_ids(dsn) == [results[0].id]
    assert windows(dsn) == [("race", results[0].id)]


def test_twenty_threads_racing_on_one_key(dsn, queue, report):
    barrier = threading.Barrier(20)
    results: list[pgqueue.EnqueueResult] = []
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                once = report.with_options(conn=conn, unique_for=60)
                barrier.wait(timeout=WAIT_S)
                results.append(once.enqueue_sync(customer=3))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S * 2)
    assert errors == []
    assert len(results) == 20
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert job_ids(dsn) == [results[0].id]
    queue.close_sync()


def test_threads_racing_to_take_over_an_expired_window(dsn, queue, report):
    keyed = report.with_options(unique_for=60, unique_key="expired")
    old = keyed.enqueue_sync(customer=1)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE pgqueue.unique_windows SET expires_at = now() - interval '1 hour'")
    barrier = threading.Barrier(20)
    results: list[pgqueue.EnqueueResult] = []

    def attempt() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            barrier.wait(timeout=WAIT_S)
            results.append(keyed.with_options(conn=conn).enqueue_sync(customer=1))

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT_S * 2)
    assert len(results) == 20
    new = {r.id for r in results}
    assert len(new) == 1
    assert old.id not in new
    assert sum(not r.duplicate for r in results) == 1
    assert job_ids(dsn) == [old.id, *new]
    queue.close_sync()


# --- transactions, bulk, the API -----------------------------------------------------


def test_a_rolled_back_enqueue_leaves_no_job_and_no_window(dsn, queue, report):
    with psycopg.connect(dsn) as conn:
        report.with_options(conn=conn, unique_for=60, unique_key="rb").enqueue_sync(customer=1)
        assert windows(dsn) == []  # not committed: no one else sees it
        conn.rollback()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            report.with_options(conn=conn, unique_for=60, unique_key="rb").enqueue_sync(customer=1)
            raise RuntimeError("the caller's transaction fails")
    assert job_ids(dsn) == []
    assert windows(dsn) == []
    fresh = report.with_options(unique_for=60, unique_key="rb").enqueue_sync(customer=1)
    assert not fresh.duplicate
    queue.close_sync()


async def test_in_bulk_on_both_faces(dsn, queue, report):
    plain = report.job(customer=0)
    once = report.with_options(unique_for=60)
    specs = [once.job(customer=1), plain, once.job(customer=1), once.job(customer=2)]
    assert not specs[0].copyable
    results = await queue.enqueue_many(specs)
    assert [r.duplicate for r in results] == [False, False, True, False]
    assert results[0].id == results[2].id
    again = queue.enqueue_many_sync([once.job(customer=2), once.job(customer=1)])
    assert again == [(results[3].id, True), (results[0].id, True)]
    assert len(job_ids(dsn)) == 3


async def test_a_bulk_enqueue_in_a_rolled_back_transaction_leaves_nothing(dsn, queue, report):
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        once = report.with_options(unique_for=60)
        await queue.enqueue_many([once.job(customer=1), once.job(customer=2)], conn=conn)
        await tx.rollback()
    finally:
        await conn.close()
    assert job_ids(dsn) == []
    assert windows(dsn) == []


async def test_over_http(dsn, queue):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        body = {"task": "report.build", "args": {"customer": 1}, "unique_for_seconds": 60}
        first = await client.post("/v1/jobs", json=body)
        assert first.status_code == 202, first.text
        assert first.json()["unique_for_seconds"] == 60
        assert first.json()["unique_key"].startswith("report.build:")
        # The window's first job, whatever this request asked (its key says which).
        again = await client.post(
            "/v1/jobs", json=body | {"unique_key": first.json()["unique_key"]}
        )
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        batch = await client.post(
            "/v1/jobs/batch",
            json={"jobs": [body, body | {"args": {"customer": 2}}, {"task": "report.build"}]},
        )
        assert batch.status_code == 202, batch.text
        items = batch.json()["jobs"]
        assert items[0] == {"id": first.json()["id"], "duplicate": True}
        assert [i["duplicate"] for i in items[1:]] == [False, False]
        bad = await client.post("/v1/jobs", json=body | {"idempotency_key": "k"})
        assert bad.status_code == 422, bad.text
        header = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k"})
        assert header.status_code == 409, header.text
    assert len(job_ids(dsn)) == 3


# --- what is refused -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"unique_for": 0}, "unique_for must be a number of seconds"),
        ({"unique_for": -1}, "unique_for must be a number of seconds"),
        ({"unique_for": float("inf")}, "unique_for must be a number of seconds"),
        ({"unique_for": float("nan")}, "unique_for must be a number of seconds"),
        ({"unique_for": timedelta(days=365 * 101)}, "unique_for must be a number of seconds"),
        ({"unique_for": True}, "unique_for must be a number of seconds"),
        ({"unique_for": "60"}, "unique_for must be a number of seconds"),
        ({"unique_for": 60, "idempotency_key": "k"}, "not idempotency_key and unique_for"),
        ({"unique_for": 60, "debounce": 1}, "not unique_for and debounce"),
        ({"unique_key": "k"}, "give one of them too"),
        ({"unique_for": 60, "unique_key": ""}, "unique_key must be a string"),
        ({"unique_for": 60, "unique_key": "x" * 256}, "unique_key must be a string"),
        ({"unique_for": 60, "unique_key": "a\x00b"}, "unique_key must be a string"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(dsn, queue, options, match):
    with pytest.raises(InvalidJobError, match=match):
        queue.build("report.build", {"customer": 1}, **options)
    with pytest.raises(InvalidJobError, match=match):
        queue.enqueue_sync("report.build", {"customer": 1}, **options)
    assert job_ids(dsn) == []
    queue.close_sync()


def test_the_database_refuses_what_build_refuses(dsn):
    with psycopg.connect(dsn) as conn:
        for values in (
            "('t', 'k', NULL, NULL, NULL)",  # a key without a mode
            "('t', NULL, interval '1 minute', NULL, NULL)",  # a mode without a key
            "('t', 'k', interval '1 minute', interval '1 second', NULL)",  # both modes
            "('t', 'k', interval '1 minute', NULL, 'idem')",  # beside an idempotency key
            "('t', 'k', interval '0', NULL, NULL)",
        ):
            with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
                conn.execute(
                    "INSERT INTO pgqueue.jobs (task, unique_key, unique_for, debounce, "
                    f"idempotency_key) VALUES {values}"
                )


async def test_the_dashboards_job_page_shows_the_window_and_its_key(dsn, queue):
    key = "<b>customer</b>"
    result = await queue.enqueue("report.build", {}, unique_for=300, unique_key=key)
    _, secret = create_key(dsn, name="reader", scope="read")
    settings = ServiceSettings(dsn=dsn, key_cache_seconds=0)
    async with AsyncTestClient(create_app(settings)) as client:
        page = await client.get("/dashboard/login")
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        await client.post("/dashboard/login", data={"csrf_token": csrf[1], "key": secret})
        html = (await client.get(f"/dashboard/jobs/{result.id}")).text
    assert "Unique for" in html
    assert "5 min 00 s on key <code>&lt;b&gt;customer&lt;/b&gt;</code>" in html
