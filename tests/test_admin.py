"""The admin API (pgqueue.admin): what the HTTP service does, as a user's own code would
do it, on the Queue's own connections and on each kind of connection of the caller's."""

from __future__ import annotations

import asyncpg
import psycopg
import pytest

import pgqueue
from pgqueue.admin import (
    Admin,
    ApiKey,
    InvalidApiKeyError,
    JobCounters,
    LiveApiKey,
    QueueSettings,
    Throughput,
)


@pytest.fixture
async def admin(dsn):
    queue = pgqueue.Queue(dsn)
    yield Admin(queue)
    await queue.close()


async def test_jobs_page_newest_first_by_keyset_with_filters(admin, dsn):
    queue = admin.queue
    ids = [(await queue.enqueue("t", {"n": n}, queue="a")).id for n in range(5)]
    await queue.enqueue("t", queue="b")
    await queue.enqueue("other", queue="a")
    pages, cursor = [], None
    while True:
        page = await admin.list_jobs(queue="a", task="t", state="queued", limit=2, before=cursor)
        pages.append([j.id for j in page.jobs])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == [ids[:2:-1], ids[2:0:-1], ids[:1]]
    assert all(j.queue == "a" for j in (await admin.list_jobs(queue="a")).jobs)
    with pytest.raises(pgqueue.InvalidJobError, match="state must be one of"):
        await admin.list_jobs(state="nope")
    with pytest.raises(pgqueue.InvalidJobError, match="limit"):
        await admin.list_jobs(limit=0)


async def test_enqueue_cancel_and_retry_return_the_job_as_it_stands(admin, dsn):
    conn = await asyncpg.connect(dsn)
    try:
        spec = admin.queue.build("t", {"x": 1}, idempotency_key="k1")
        first = await admin.enqueue_job(spec, conn=conn)
        assert not first.duplicate
        assert first.job is not None
        assert first.job.state is pgqueue.JobState.QUEUED
        assert first.job.args == {"x": 1}
        again = await admin.enqueue_job(spec, conn=conn)
        assert (again.id, again.duplicate) == (first.id, True)
        assert again.job == await admin.get_job(first.id, conn=conn)
        cancelled = await admin.cancel_job(first.id, conn=conn)
        assert cancelled.state is pgqueue.JobState.CANCELLED
    finally:
        await conn.close()
    retried = await admin.retry_job(first.id)  # the Queue's own connections
    assert retried.state is pgqueue.JobState.QUEUED
    with pytest.raises(pgqueue.JobNotFoundError):
        await admin.cancel_job(2**62)


async def test_api_keys_from_creation_to_revocation(admin, dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        new = admin.create_api_key_sync("ci", "enqueue", conn=conn)
        assert new.key.startswith("pgq_")
        with pytest.raises(InvalidApiKeyError, match="scope must be one of"):
            admin.create_api_key_sync("x", "root", conn=conn)  # type: ignore[arg-type]
        with pytest.raises(InvalidApiKeyError, match="1-100 characters"):
            admin.create_api_key_sync("", "read", conn=conn)
        (listed,) = admin.list_api_keys_sync(conn=conn)
    assert isinstance(listed, ApiKey)
    assert (listed.id, listed.name, listed.scope, listed.revoked_at) == (
        new.id,
        "ci",
        "enqueue",
        None,
    )
    assert await admin.find_api_key(new.key) == LiveApiKey(new.id, "ci", "enqueue")
    assert await admin.find_api_key(new.key + "x") is None
    assert await admin.revoke_api_key(new.id)
    assert not await admin.revoke_api_key(new.id)
    assert await admin.find_api_key(new.key) is None
    (listed,) = await admin.list_api_keys()
    assert listed.revoked_at is not None


async def test_queue_and_figure_reads_on_a_psycopg_async_connection(admin, dsn):
    queue = admin.queue
    await queue.enqueue("t", queue="a")
    await queue.enqueue("t", queue="a")
    done = (await queue.enqueue("t", queue="b")).id
    await queue.cancel(done)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await admin.pause_queue("a", conn=conn)
        settings = await admin.queue_settings(conn=conn)
        stats = {s.queue: s for s in await admin.queue_stats(conn=conn)}
        counters = await admin.job_counters(conn=conn)
        bounds = await admin.job_duration_bounds(conn=conn)
        throughput = await admin.throughput(15, conn=conn)
        await admin.resume_queue("a", conn=conn)
        assert await admin.queue_settings(conn=conn) == [QueueSettings("a", paused=False)]
    assert settings == [QueueSettings("a", paused=True)]
    assert (stats["a"].queued, stats["a"].paused, stats["b"].cancelled) == (2, True, 1)
    assert all(isinstance(c, JobCounters) for c in counters)
    assert sum(c.enqueued for c in counters) == 3
    assert [(c.queue, c.cancelled) for c in counters] == [("a", 0), ("b", 1)]
    assert all(len(c.duration_buckets) == len(bounds) + 1 for c in counters)
    assert stats["a"].claimable == 2
    assert throughput == [Throughput("b", 0, 1, 0)]
