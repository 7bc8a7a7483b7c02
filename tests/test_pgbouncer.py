"""pgqueue behind a real PgBouncer in transaction pooling mode, with fewer server
connections than clients, so that consecutive transactions of one client really run on
different server connections: enqueues (sync, async, in the caller's transaction), a
worker and a producer (the fault suite's invariants: nothing lost, nothing run twice at
once, a transactional job's effects exactly once), the HTTP API, migrations, and where
LISTEN goes (a direct DSN beside the pooler, or nowhere: the worker says so and polls).

pgbouncer is installed from Debian's packages when missing (tests/pgbouncer.py); the
tests skip, saying why, when it cannot be."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING

import asyncpg
import httpx
import psycopg
import pytest
from faultkit import Figures, check_invariants, diagnose, prepare, spawn, stop_all, unfinished
from pgbouncer import PgBouncer, PgBouncerUnavailableError, ensure_installed
from psycopg.conninfo import conninfo_to_dict
from test_cli import pgqueue_cmd
from test_cli_service import Served

import pgqueue
from pgqueue import connect, migrate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import PgServer

POOL_SIZE = 4


@pytest.fixture(scope="module")
def bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """pgbouncer in transaction pooling mode, 4 server connections per database, in
    front of the test server."""
    try:
        binary = ensure_installed()
        started = PgBouncer(binary, pg_server.admin_dsn, pool_size=POOL_SIZE)
    except PgBouncerUnavailableError as exc:
        pytest.skip(f"no pgbouncer: {exc}")
    try:
        yield started
    finally:
        started.stop()


def through(bouncer: PgBouncer, direct_dsn: str) -> str:
    """The DSN of ``direct_dsn``'s database through ``bouncer``."""
    return bouncer.dsn_for(str(conninfo_to_dict(direct_dsn)["dbname"]))


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's DSNs lead to a transaction pooler, as ``--pooler`` says."""
    # The documented names, spelled out.
    monkeypatch.setenv("PGQUEUE_POOLER", "1")
    monkeypatch.delenv("PGQUEUE_LISTEN_DSN", raising=False)


def count_jobs(dsn: str, task: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE task = %s", (task,)).fetchone()
    assert row is not None
    return int(row[0])


def server_connections(dsn: str) -> int:
    """Backends connected to ``dsn``'s database, other than this one."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def advisory_locks(dsn: str) -> int:
    """Advisory locks held in ``dsn``'s database, by anyone."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    assert row is not None
    return int(row[0])


def in_threads(count: int, fn: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            fn(i)
        except BaseException as exc:  # the test reports what a thread raised
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


# --- the choice of connection options ---------------------------------------------


def test_a_direct_dsn_keeps_prepared_statements_and_listens_on_itself(monkeypatch):
    monkeypatch.delenv(connect.POOLER_ENV, raising=False)
    monkeypatch.delenv(connect.LISTEN_DSN_ENV, raising=False)
    dsn = "postgresql://u@db.example/app"
    assert not connect.behind_pooler(dsn)
    assert "prepare_threshold" not in connect.psycopg_connect_args(dsn)  # psycopg's default
    assert connect.asyncpg_connect_args(dsn) == {}  # asyncpg's statement cache
    assert connect.listen_dsn(dsn) == dsn


def test_a_pooler_gets_no_prepared_statements_and_no_listen(monkeypatch):
    monkeypatch.delenv(connect.LISTEN_DSN_ENV, raising=False)
    monkeypatch.setenv(connect.POOLER_ENV, "1")
    dsn = "postgresql://u@bouncer.example:6432/app"
    assert connect.psycopg_connect_args(dsn)["prepare_threshold"] is None
    assert connect.asyncpg_connect_args(dsn) == {"statement_cache_size": 0}
    assert connect.listen_dsn(dsn) is None
    monkeypatch.setenv(connect.LISTEN_DSN_ENV, "postgresql://u@db.example/app")
    assert connect.listen_dsn(dsn) == "postgresql://u@db.example/app"
    monkeypatch.setenv(connect.POOLER_ENV, "maybe")
    with pytest.raises(ValueError, match="PGQUEUE_POOLER"):
        connect.behind_pooler(dsn)


def test_declare_pooler_concerns_that_dsn_only(monkeypatch):
    monkeypatch.delenv(connect.POOLER_ENV, raising=False)
    monkeypatch.delenv(connect.LISTEN_DSN_ENV, raising=False)
    monkeypatch.setattr(connect, "_declared", {})
    pooled_dsn, direct = "postgresql://u@bouncer:6432/app", "postgresql://u@db/app"
    connect.declare_pooler(pooled_dsn, listen_dsn=direct)
    assert connect.behind_pooler(pooled_dsn)
    assert connect.listen_dsn(pooled_dsn) == direct
    assert not connect.behind_pooler(direct)
    assert connect.listen_dsn(direct) == direct


def test_a_queue_declares_its_own_dsn_a_pooler(monkeypatch):
    monkeypatch.delenv(connect.POOLER_ENV, raising=False)
    monkeypatch.delenv(connect.LISTEN_DSN_ENV, raising=False)
    monkeypatch.setattr(connect, "_declared", {})
    pooled_dsn, direct = "postgresql://u@bouncer:6432/app", "postgresql://u@db/app"
    pgqueue.Queue(pooled_dsn, pooler=True, listen_dsn=direct)
    assert connect.behind_pooler(pooled_dsn)
    assert connect.listen_dsn(pooled_dsn) == direct
    with pytest.raises(ValueError, match="pooler=True"):
        pgqueue.Queue(direct, listen_dsn=direct)
    # From PGQUEUE_DSN: declared once the Queue resolves it.
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://u@bouncer:6432/other")
    queue = pgqueue.Queue(pooler=True)
    assert not connect.behind_pooler("postgresql://u@bouncer:6432/other")
    assert queue.dsn == "postgresql://u@bouncer:6432/other"
    assert connect.behind_pooler(queue.dsn)
    assert connect.listen_dsn(queue.dsn) is None


# --- through a real pgbouncer ----------------------------------------------------------


def test_enqueues_through_pgbouncer(bouncer, dsn, pooled):
    """640 sync enqueues from 8 threads and 400 concurrent async ones, on 4 server
    connections, then enqueues in the caller's transaction (psycopg and asyncpg): a
    commit keeps them, a rollback leaves none."""
    pooled_dsn = through(bouncer, dsn)
    queue = pgqueue.Queue(pooled_dsn)
    try:
        in_threads(8, lambda i: [queue.enqueue_sync("t.sync", {"i": i, "n": n}) for n in range(80)])
        queue.enqueue_many_sync([queue.build("t.many", {"n": n}) for n in range(50)])

        async def async_enqueues() -> None:
            aqueue = pgqueue.Queue(pooled_dsn)
            try:
                await asyncio.gather(*(aqueue.enqueue("t.async", {"n": n}) for n in range(400)))
                await aqueue.enqueue_many([aqueue.build("t.many", {"n": n}) for n in range(50)])
                # The caller's own asyncpg connection to the pooler: no statement cache.
                conn = await asyncpg.connect(pooled_dsn, statement_cache_size=0)
                try:
                    async with conn.transaction():
                        for n in range(20):
                            await aqueue.enqueue("t.caller_async", {"n": n}, conn=conn)
                    with pytest.raises(RuntimeError):
                        async with conn.transaction():
                            for n in range(20):
                                await aqueue.enqueue("t.rolled_back", {"n": n}, conn=conn)
                            raise RuntimeError("roll back")
                finally:
                    await conn.close()
            finally:
                await aqueue.close()

        asyncio.run(async_enqueues())
        # The caller's own psycopg connection to the pooler: nothing prepared.
        with psycopg.connect(pooled_dsn, prepare_threshold=None) as conn:
            with conn.transaction():
                for n in range(20):
                    queue.enqueue_sync("t.caller_sync", {"n": n}, conn=conn)
            with pytest.raises(RuntimeError), conn.transaction():
                for n in range(20):
                    queue.enqueue_sync("t.rolled_back", {"n": n}, conn=conn)
                raise RuntimeError("roll back")
    finally:
        queue.close_sync()
    assert count_jobs(dsn, "t.sync") == 640
    assert count_jobs(dsn, "t.async") == 400
    assert count_jobs(dsn, "t.many") == 100
    assert count_jobs(dsn, "t.caller_sync") == 20
    assert count_jobs(dsn, "t.caller_async") == 20
    assert count_jobs(dsn, "t.rolled_back") == 0
    # More clients than server connections: transactions really changed connections.
    assert server_connections(dsn) <= POOL_SIZE


def test_queue_pooler_true_enqueues_through_pgbouncer(bouncer, dsn, monkeypatch):
    """Queue(dsn, pooler=True), no environment: concurrent sync enqueues on rotating
    server connections (without it, psycopg's prepared statements break them)."""
    monkeypatch.delenv(connect.POOLER_ENV, raising=False)
    monkeypatch.delenv(connect.LISTEN_DSN_ENV, raising=False)
    queue = pgqueue.Queue(through(bouncer, dsn), pooler=True)
    try:
        in_threads(8, lambda i: [queue.enqueue_sync("t.declared", {"i": i}) for _ in range(40)])
    finally:
        queue.close_sync()
    assert count_jobs(dsn, "t.declared") == 320


def test_a_worker_and_a_producer_through_pgbouncer_lose_nothing(bouncer, dsn, pooled, monkeypatch):
    """Two workers through pgbouncer (one listening on a direct DSN, one polling) and a
    producer enqueueing through it meanwhile: every job succeeds, none runs twice at
    once, and every transactional job's ledger row (written in the transaction that
    completes it, through the pooler) exists exactly once."""
    pooled_dsn = through(bouncer, dsn)
    figures = Figures(jobs=1_000)
    prepare(dsn, 600)  # the ledger table, and 600 jobs (every 4th transactional)
    monkeypatch.setenv("PGQUEUE_FAULT_LOG_LEVEL", "info")  # listener_connected too
    listening = spawn(pooled_dsn, "--pooler", "--listen-dsn", dsn, ledger_dsn=dsn)
    polling = spawn(pooled_dsn, "--pooler", ledger_dsn=dsn)
    workers = [listening, polling]
    producer = pgqueue.Queue(pooled_dsn)
    try:

        def produce(i: int) -> None:
            for n in range(600 + i * 100, 700 + i * 100):
                task = "fault.tx" if n % 4 == 0 else "fault.work"
                producer.enqueue_sync(task, {"n": n}, queue="faults", max_attempts=20)

        in_threads(4, produce)
        deadline = time.monotonic() + 120
        while unfinished(dsn):
            if time.monotonic() > deadline:
                pytest.fail(f"unfinished after 120 s: {diagnose(dsn)}")
            time.sleep(0.2)  # a poll of the table, bounded by the deadline
        stop_all(workers)
        polling_lines = [e for e in polling.events() if e.get("event") == "listener_polling_only"]
        listening_events = [e.get("event") for e in listening.events()]
    finally:
        producer.close_sync()
        for w in workers:
            w.close()
    check_invariants(dsn, figures)
    assert figures.tx_jobs == 250
    assert len(polling_lines) == 1, polling_lines  # said once
    assert "transaction pooler" in polling_lines[0]["reason"]
    assert "listener_connected" in listening_events
    assert "listener_polling_only" not in listening_events


def test_waits_through_pgbouncer_with_and_without_a_listen_dsn(bouncer, dsn, pooled, monkeypatch):
    """Queue.wait and wait_sync behind a pooler: LISTEN on the direct DSN when given,
    else the poll finds the finished job."""
    pooled_dsn = through(bouncer, dsn)

    def finish_soon(job_id: int) -> None:
        def finish() -> None:
            threading.Event().wait(0.3)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pgqueue.cancel_job(%s)", (job_id,))

        threading.Thread(target=finish).start()

    for listen in (None, dsn):
        if listen is None:
            monkeypatch.delenv("PGQUEUE_LISTEN_DSN", raising=False)
        else:
            monkeypatch.setenv("PGQUEUE_LISTEN_DSN", listen)
        queue = pgqueue.Queue(pooled_dsn)
        try:
            job_id = queue.enqueue_sync("t.waited", {}).id
            finish_soon(job_id)
            assert queue.wait_sync(job_id, timeout=10).state == "cancelled"

            async def wait_async(queue: pgqueue.Queue = queue) -> str:
                job_id = (await queue.enqueue("t.waited", {})).id
                finish_soon(job_id)
                state = (await queue.wait(job_id, timeout=10)).state
                await queue.close()
                return str(state)

            assert asyncio.run(wait_async()) == "cancelled"
        finally:
            queue.close_sync()


def test_the_api_through_pgbouncer(bouncer, dsn, pooled):
    """POST and GET /v1/jobs through pgbouncer, 20 requests at a time on the API's
    pool of 10 connections over 4 server connections."""
    pooled_dsn = through(bouncer, dsn)
    key = pgqueue_cmd("keys", "create", "--name", "n", "--scope", "enqueue", "--dsn", dsn)
    assert key.returncode == 0, key.stderr
    headers = {"Authorization": f"Bearer {key.stdout.strip()}"}
    served = Served("api", "--dsn", pooled_dsn, "--pooler", "--log-format", "json")
    try:
        served.wait_ready()

        async def load() -> list[int]:
            async with httpx.AsyncClient(base_url=served.url, headers=headers) as client:
                statuses = []
                for _ in range(10):
                    posted = await asyncio.gather(
                        *(client.post("/v1/jobs", json={"task": "t.api"}) for _ in range(20))
                    )
                    assert all(r.status_code == 202 for r in posted), posted[0].text
                    got = await asyncio.gather(*(client.get(r.headers["location"]) for r in posted))
                    statuses += [r.status_code for r in got]
                    assert all(r.json()["state"] == "queued" for r in got)
                return statuses

        assert asyncio.run(load()) == [200] * 200
        assert served.stop() == 0, served.log.read_text()[-3000:]
    finally:
        served.kill()
    assert count_jobs(dsn, "t.api") == 200


def test_migrate_through_pgbouncer(bouncer, make_empty_dsn):
    """`pgqueue migrate --pooler` through pgbouncer on an empty database, twice (the
    second finds nothing to do), leaving no advisory lock held."""
    empty = make_empty_dsn()
    pooled_dsn = through(bouncer, empty)
    for _ in range(2):
        done = pgqueue_cmd("migrate", "--dsn", pooled_dsn, "--pooler")
        assert done.returncode == 0, done.stderr
    assert migrate.is_up_to_date(empty)
    checked = pgqueue_cmd("migrate", "--check", "--dsn", pooled_dsn, "--pooler")
    assert checked.returncode == 0, checked.stderr
    assert advisory_locks(empty) == 0


def test_migrate_through_a_busy_pgbouncer_leaves_no_lock_behind(bouncer, make_empty_dsn):
    """While other clients keep pgbouncer's server connections busy, each transaction
    of a migration may run on another one: the migration lock must not outlive the
    transaction that took it, or the next `pgqueue migrate` waits for it forever."""
    empty = make_empty_dsn()
    pooled_dsn = through(bouncer, empty)
    stop = threading.Event()

    def busy(_i: int) -> None:
        with psycopg.connect(pooled_dsn, autocommit=True, prepare_threshold=None) as conn:
            while not stop.is_set():
                conn.execute("SELECT pg_sleep(0.005)")

    threads = [threading.Thread(target=busy, args=(i,)) for i in range(2 * POOL_SIZE)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            done = pgqueue_cmd("migrate", "--dsn", pooled_dsn, "--pooler", timeout=30)
            assert done.returncode == 0, done.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert migrate.is_up_to_date(empty)
    assert advisory_locks(empty) == 0
