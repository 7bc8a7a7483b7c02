"""Enqueueing: sync and async, on our pool and on the caller's own connection or
transaction (psycopg, asyncpg, SQLAlchemy), in bulk, idempotently, and refusing bad
input without writing anything. Always against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

import pgqueue
from pgqueue import InvalidJobError, JobState, UnsupportedConnectionError


def count_jobs(dsn: str, where: str = "true") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM pgqueue.jobs WHERE {where}").fetchone()
        assert row is not None
        return int(row[0])


def sqlalchemy_url(dsn: str, driver: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.fixture
def send_email(queue):
    @queue.task(name="send_email", queue="emails", priority=2, max_attempts=5)
    async def send_email(to: str, subject: str = "hi") -> str:
        return f"{to}:{subject}"

    return send_email


async def test_async_enqueue_writes_a_queued_row(queue, send_email):
    result = await send_email.enqueue("ada@example.com", subject="welcome")
    assert result.duplicate is False
    job = await queue.get_job(result.id)
    assert job is not None
    assert job.task == "send_email"
    assert job.queue == "emails"
    assert job.args == {"to": "ada@example.com", "subject": "welcome"}
    assert job.state is JobState.QUEUED
    assert (job.priority, job.attempts, job.max_attempts) == (2, 0, 5)
    assert job.errors == []
    assert job.result is None
    assert job.started_at is None


def test_sync_enqueue_and_options(dsn, queue, send_email):
    at = datetime.now(UTC) + timedelta(hours=1)
    result = send_email.with_options(queue="bulk", priority=-3, run_at=at).enqueue_sync("x")
    job = queue.get_job_sync(result.id)
    assert job is not None
    assert (job.queue, job.priority, job.run_at) == ("bulk", -3, at)
    by_name = queue.enqueue_sync("elsewhere.task", {"n": 1}, delay=30, max_attempts=9)
    job = queue.get_job_sync(by_name.id)
    assert job is not None
    assert job.task == "elsewhere.task"
    assert job.max_attempts == 9
    assert job.run_at > job.created_at + timedelta(seconds=29)
    queue.close_sync()


# --- the caller's own transaction ----------------------------------------------------


def test_psycopg_transaction_rollback_leaves_no_job_and_commit_does(dsn, send_email):
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE users (id int)")
        conn.commit()
        conn.execute("INSERT INTO users VALUES (1)")
        send_email.with_options(conn=conn).enqueue_sync("rolled@back")
        conn.rollback()
        assert count_jobs(dsn) == 0
        conn.execute("INSERT INTO users VALUES (2)")
        result = send_email.with_options(conn=conn).enqueue_sync("committed")
        assert count_jobs(dsn) == 0  # not visible before the caller commits
        conn.commit()
    assert count_jobs(dsn, f"id = {result.id}") == 1


def test_psycopg_explicit_transaction_block(dsn, queue, send_email):
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            queue.enqueue_many_sync([send_email.job("a"), send_email.job("b")], conn=conn)
            raise RuntimeError("app failure after enqueueing")
    assert count_jobs(dsn) == 0


async def test_psycopg_async_connection(dsn, send_email):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await send_email.with_options(conn=conn).enqueue("gone")
        await conn.rollback()
        kept = await send_email.with_options(conn=conn).enqueue("kept")
        await conn.commit()
    assert count_jobs(dsn) == 1
    assert count_jobs(dsn, f"id = {kept.id}") == 1


async def test_asyncpg_connection_and_transaction(dsn, queue, send_email):
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await send_email.with_options(conn=conn).enqueue("gone")
                await queue.enqueue_many([send_email.job("gone2")], conn=conn)
                raise RuntimeError("rollback")
        async with conn.transaction():
            kept = await send_email.with_options(conn=conn).enqueue("kept")
    finally:
        await conn.close()
    assert count_jobs(dsn) == 1
    assert count_jobs(dsn, f"id = {kept.id}") == 1


def test_sqlalchemy_session_and_connection(dsn, send_email):
    engine = create_engine(sqlalchemy_url(dsn, "psycopg"))
    try:
        with Session(engine) as session:
            session.execute(text("SELECT 1"))
            send_email.with_options(conn=session).enqueue_sync("gone")
            session.rollback()
            send_email.with_options(conn=session).enqueue_sync("kept-session")
            session.commit()
        with engine.connect() as conn:
            send_email.with_options(conn=conn).enqueue_sync("gone")
            conn.rollback()
            send_email.with_options(conn=conn).enqueue_sync("kept-conn")
            conn.commit()
    finally:
        engine.dispose()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT args->>'to' FROM pgqueue.jobs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["kept-session", "kept-conn"]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_sqlalchemy_async_session(dsn, send_email, driver):
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_async_engine(sqlalchemy_url(dsn, driver))
    try:
        async with AsyncSession(engine) as session:
            await send_email.with_options(conn=session).enqueue("gone")
            await session.rollback()
            await send_email.with_options(conn=session).enqueue("kept")
            await session.commit()
        async with engine.connect() as conn:
            await send_email.with_options(conn=conn).enqueue("gone")
            await conn.rollback()
    finally:
        await engine.dispose()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT args->>'to' FROM pgqueue.jobs").fetchall()
    assert [r[0] for r in rows] == ["kept"]


async def test_wrong_connection_kinds_get_a_clear_error(dsn, send_email):
    with pytest.raises(UnsupportedConnectionError, match="cannot enqueue on"):
        send_email.with_options(conn=object()).enqueue_sync("x")
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        with pytest.raises(UnsupportedConnectionError, match="async connection"):
            send_email.with_options(conn=aconn).enqueue_sync("x")
    with psycopg.connect(dsn) as conn:
        with pytest.raises(UnsupportedConnectionError, match="sync connection"):
            await send_email.with_options(conn=conn).enqueue("x")
    assert count_jobs(dsn) == 0


# --- wake-ups follow the transaction -------------------------------------------------


async def _listen(dsn: str) -> tuple[asyncpg.Connection, asyncio.Queue[str]]:
    conn = await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("pgqueue_enqueued", lambda *a: received.put_nowait(a[3]))
    return conn, received


async def test_notify_only_on_commit_and_once_per_queue(dsn, queue, send_email):
    listener, received = await _listen(dsn)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await send_email.with_options(conn=conn).enqueue("x")
                    raise RuntimeError("rollback")
            # A rollback sends nothing: prove it by a later commit's notification being
            # the first one to arrive.
            async with conn.transaction():
                for i in range(50):
                    await send_email.with_options(conn=conn).enqueue(f"u{i}")
                await queue.enqueue_many(
                    [send_email.with_options(queue=f"q{i % 3}").job("b") for i in range(3000)],
                    conn=conn,
                )
        finally:
            await conn.close()
        got = [await asyncio.wait_for(received.get(), 5) for _ in range(4)]
        assert sorted(got) == ["emails", "q0", "q1", "q2"]
        # Once per queue per transaction, never once per row: nothing more is coming.
        # A second, later commit is a marker that everything before it was delivered.
        await queue.enqueue("marker", queue="marker")
        assert await asyncio.wait_for(received.get(), 5) == "marker"
        assert received.empty()
    finally:
        await listener.close()


# --- bulk ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_bulk_enqueue_of_100k_jobs_returns_every_id_in_order(dsn, queue, send_email):
    specs = [send_email.job(f"user{i}") for i in range(100_000)]
    results = await queue.enqueue_many(specs)
    assert len(results) == 100_000
    assert len({r.id for r in results}) == 100_000
    assert not any(r.duplicate for r in results)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, args->>'to' FROM pgqueue.jobs WHERE id = ANY(%s)",
            ([results[0].id, results[77_777].id, results[-1].id],),
        ).fetchall()
    assert dict(rows) == {
        results[0].id: "user0",
        results[77_777].id: "user77777",
        results[-1].id: "user99999",
    }
    assert count_jobs(dsn) == 100_000


def test_bulk_with_keys_delays_and_duplicates(dsn, queue, send_email):
    first = send_email.with_options(idempotency_key="k1").enqueue_sync("a")
    at = datetime.now(UTC) + timedelta(minutes=5)
    specs = [
        send_email.with_options(idempotency_key="k1").job("again"),  # held already
        send_email.job("plain"),
        send_email.with_options(idempotency_key="k2").job("new"),
        send_email.with_options(idempotency_key="k2").job("same batch"),
        send_email.with_options(run_at=at).job("later"),
        send_email.with_options(delay=60).job("delayed"),
    ]
    results = queue.enqueue_many_sync(specs)
    assert results[0].id == first.id
    assert results[0].duplicate
    assert not results[1].duplicate
    assert not results[2].duplicate
    assert results[3] == pgqueue.EnqueueResult(results[2].id, duplicate=True)
    later = queue.get_job_sync(results[4].id)
    delayed = queue.get_job_sync(results[5].id)
    assert later is not None
    assert later.run_at == at
    assert delayed is not None
    assert delayed.run_at >= delayed.created_at + timedelta(seconds=59)
    assert count_jobs(dsn) == 5
    queue.close_sync()


async def test_bulk_with_a_bad_item_writes_nothing(dsn, queue, send_email):
    good = [send_email.job("a"), send_email.job("b")]
    with pytest.raises(InvalidJobError, match="item 1: a dict is not a JobSpec"):
        await queue.enqueue_many([good[0], {"task": "x"}, good[1]])  # type: ignore[list-item]
    assert count_jobs(dsn) == 0
    assert await queue.enqueue_many([]) == []


# --- idempotency ---------------------------------------------------------------------


async def test_twenty_concurrent_enqueues_of_one_key_make_one_job(dsn, queue, send_email):
    conns = [await asyncpg.connect(dsn) for _ in range(20)]
    try:
        gate = asyncio.Event()
        opened = 0
        all_open = asyncio.Event()

        async def attempt(conn: asyncpg.Connection) -> pgqueue.EnqueueResult:
            nonlocal opened
            async with conn.transaction():
                await conn.execute("SELECT 1")  # the transaction is open on the server
                opened += 1
                if opened == len(conns):
                    all_open.set()
                await gate.wait()
                return await send_email.with_options(conn=conn, idempotency_key="once").enqueue("x")

        pending = [asyncio.create_task(attempt(c)) for c in conns]
        await asyncio.wait_for(all_open.wait(), 30)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*pending), 30)
    finally:
        for c in conns:
            await c.close()
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert count_jobs(dsn) == 1


def test_twenty_threads_racing_on_one_key(dsn, queue, send_email):
    barrier = threading.Barrier(20)
    results: list[pgqueue.EnqueueResult] = []

    def attempt() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            barrier.wait(timeout=30)
            results.append(
                send_email.with_options(conn=conn, idempotency_key="race").enqueue_sync("x")
            )

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 20
    assert len({r.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert count_jobs(dsn) == 1


def test_a_failed_or_cancelled_job_gives_its_key_up(dsn, queue, send_email):
    first = send_email.with_options(idempotency_key="k").enqueue_sync("x")
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE pgqueue.jobs SET state = 'running' WHERE id = %s", (first.id,))
        conn.execute("UPDATE pgqueue.jobs SET state = 'succeeded' WHERE id = %s", (first.id,))
    again = send_email.with_options(idempotency_key="k").enqueue_sync("x")
    assert again == pgqueue.EnqueueResult(first.id, duplicate=True)  # succeeded keeps it
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE pgqueue.jobs SET state = 'queued' WHERE false")
        conn.execute(
            "INSERT INTO pgqueue.jobs (task, idempotency_key, state) VALUES ('t', 'f', 'failed')"
        )
    fresh = send_email.with_options(idempotency_key="f").enqueue_sync("x")
    assert not fresh.duplicate
    queue.close_sync()


def test_repeatable_read_cannot_see_the_holder_and_says_so(dsn, queue, send_email):
    # Under REPEATABLE READ a holder committed after the snapshot is invisible:
    # PostgreSQL refuses the insert with a serialization failure, which the application
    # retries like any other; nothing is written.
    with psycopg.connect(dsn) as reader:
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")  # the snapshot is taken here
        send_email.with_options(idempotency_key="rr").enqueue_sync("holder")  # commits
        with pytest.raises(psycopg.errors.SerializationFailure):
            send_email.with_options(conn=reader, idempotency_key="rr").enqueue_sync("x")
        reader.rollback()
    assert count_jobs(dsn) == 1
    queue.close_sync()


# --- bad input writes nothing --------------------------------------------------------


async def test_bad_input_is_refused_before_anything_is_written(dsn, queue, send_email):
    with pytest.raises(InvalidJobError, match="JSON-serialisable"):
        await send_email.enqueue(to=object())  # type: ignore[arg-type]
    with pytest.raises(InvalidJobError, match="invalid queue name"):
        await send_email.with_options(queue="no spaces").enqueue("x")
    with pytest.raises(InvalidJobError, match="priority"):
        await send_email.with_options(priority=99999).enqueue("x")
    with pytest.raises(InvalidJobError, match="arguments do not match"):
        await send_email.enqueue(unknown_arg=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidJobError, match="invalid task name"):
        await queue.enqueue("bad task name")
    assert count_jobs(dsn) == 0


def test_the_database_guards_plain_sql_too(dsn):
    with psycopg.connect(dsn) as conn:
        for bad in [
            "INSERT INTO pgqueue.jobs (task, queue) VALUES ('t', 'bad queue')",
            "INSERT INTO pgqueue.jobs (task) VALUES ('bad task')",
            "INSERT INTO pgqueue.jobs (task, args) VALUES ('t', '[1]')",
            "INSERT INTO pgqueue.jobs (task, max_attempts) VALUES ('t', 0)",
            "INSERT INTO pgqueue.jobs (task, priority) VALUES ('t', 40000)",
            f"INSERT INTO pgqueue.jobs (task, queue) VALUES ('t', '{'q' * 65}')",
            f"INSERT INTO pgqueue.jobs (task) VALUES ('{'t' * 201}')",
        ]:
            with pytest.raises((psycopg.errors.DataError, psycopg.errors.IntegrityError)):
                conn.execute(bad)
            conn.rollback()
    assert count_jobs(dsn) == 0


# --- pgqueue's own connections -------------------------------------------------------


def _wait_for_no_backends(dsn: str, timeout: float = 10) -> None:
    # A closed connection's server process exits a moment after the client hangs up.
    deadline = time.monotonic() + timeout
    while _backends(dsn) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _backends(dsn) == 0


def _backends(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return int(row[0])


async def test_concurrent_first_calls_share_one_pool_and_close_frees_it(dsn):
    queue = pgqueue.Queue(dsn, pool_size=5)

    @queue.task(name="t")
    async def t(i: int) -> None: ...

    results = await asyncio.gather(*(t.enqueue(i=i) for i in range(50)))
    assert len({r.id for r in results}) == 50
    assert _backends(dsn) <= 5
    await queue.close()
    _wait_for_no_backends(dsn)


def test_sync_calls_from_many_threads_share_the_pool(dsn):
    queue = pgqueue.Queue(dsn, pool_size=4)
    ids: list[int] = []

    def worker() -> None:
        ids.extend(queue.enqueue_sync("t", {"i": i}).id for i in range(20))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len(set(ids)) == 160
    assert _backends(dsn) <= 4
    queue.close_sync()
    _wait_for_no_backends(dsn)


async def test_bulk_copy_path_on_every_driver(dsn, queue, send_email):
    sync_ids = queue.enqueue_many_sync([send_email.job(f"sync{i}") for i in range(50)])
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        async_ids = await queue.enqueue_many(
            [send_email.job(f"apsy{i}") for i in range(50)], conn=aconn
        )
        await aconn.commit()
    own_ids = await queue.enqueue_many([send_email.job(f"own{i}") for i in range(50)])
    with psycopg.connect(dsn) as conn:
        got = dict(conn.execute("SELECT id, args->>'to' FROM pgqueue.jobs").fetchall())
    for prefix, results in [("sync", sync_ids), ("apsy", async_ids), ("own", own_ids)]:
        assert [got[r.id] for r in results] == [f"{prefix}{i}" for i in range(50)]
    queue.close_sync()


def test_own_connections_keep_one_cursor_and_callers_connections_none(dsn):
    from pgqueue.executors import PsycopgExecutor

    with psycopg.connect(dsn, autocommit=True) as conn:
        PsycopgExecutor(conn).fetch("SELECT 1", ())
        assert not hasattr(conn, "_pgqueue_raw_cursor")  # nothing left on a caller's
        first = PsycopgExecutor(conn, own=True)
        assert first.fetch("SELECT $1::int", (7,)) == [(7,)]
        cursor = conn._pgqueue_raw_cursor
        assert PsycopgExecutor(conn, own=True).fetch("SELECT 2", ()) == [(2,)]
        assert conn._pgqueue_raw_cursor is cursor
        with pytest.raises(psycopg.errors.DivisionByZero):
            first.fetch("SELECT 1 / 0", ())
        assert first.fetch("SELECT 3", ()) == [(3,)]  # still usable after an error
