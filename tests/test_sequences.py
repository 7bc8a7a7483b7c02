"""Sequences: jobs sharing a sequence_key run one at a time, in enqueue order, across
every worker. A job behind an unfinished one waits 'blocked' (no claim's candidate) and
is queued by the statement that finishes the one ahead of it, whichever that is. Real
PostgreSQL, real worker processes; no timing asserts."""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import Any

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from workerproc import WorkerProcess, wait_for_sql

import pgqueue
from pgqueue import InvalidJobError, JobState, driver_sync
from pgqueue.executors import PsycopgExecutor
from pgqueue.service import ServiceSettings, create_app

WAIT_S = 30  # the bound of every wait; nothing here takes near it
QUEUE = "sequenced"


@pytest.fixture
def step(queue):
    @queue.task(name="sequence.step", queue=QUEUE)
    async def step(key: str, n: int) -> None: ...

    return step


def states(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT state::text FROM pgqueue.jobs ORDER BY id")]


def sequence_rows(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT * FROM pgqueue.sequences ORDER BY 1")]


def claim_and_finish(dsn: str, *, fail: bool = False) -> list[int]:
    """Claim what is claimable and finish it with the worker's own statements."""
    worker = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        ex = PsycopgExecutor(conn)
        jobs = driver_sync.claim(ex, [QUEUE], 10, worker)
        ids, attempts = [j.id for j in jobs], [j.attempt for j in jobs]
        if fail:
            errors = ['{"type": "Boom"}'] * len(ids)
            driver_sync.complete_failed(ex, ids, errors, [None] * len(ids), attempts)
        else:
            driver_sync.complete_succeeded(ex, ids, [None] * len(ids), attempts)
    return ids


def test_each_job_waits_for_the_one_ahead(dsn, queue, step):
    seq = step.with_options(sequence_key="customer-1")
    ids = [seq.enqueue_sync(key="c1", n=n).id for n in range(3)]
    other = step.with_options(sequence_key="customer-2").enqueue_sync(key="c2", n=0).id
    plain = step.enqueue_sync(key="none", n=0).id
    assert states(dsn) == ["queued", "blocked", "blocked", "queued", "queued"]
    assert sequence_rows(dsn) == [("customer-1", 3), ("customer-2", 1)]
    job = queue.get_job_sync(ids[1])
    assert job is not None
    assert (job.state, job.sequence_key, job.sequence_on_failure) == (
        JobState.BLOCKED,
        "customer-1",
        "hold",
    )
    # A claim takes the head of each sequence only, then the next once it has finished.
    assert sorted(claim_and_finish(dsn)) == [ids[0], other, plain]
    assert claim_and_finish(dsn) == [ids[1]]
    assert claim_and_finish(dsn) == [ids[2]]
    assert claim_and_finish(dsn) == []
    assert sequence_rows(dsn) == []  # a sequence with nothing unfinished leaves no row
    queue.close_sync()


def test_a_failure_for_good_holds_the_rest_until_retried(dsn, queue, step):
    seq = step.with_options(sequence_key="held", max_attempts=1)
    first, second = (seq.enqueue_sync(key="h", n=n).id for n in range(2))
    assert claim_and_finish(dsn, fail=True) == [first]
    assert states(dsn) == ["failed", "blocked"]
    assert claim_and_finish(dsn) == []
    queue.retry_sync(first)  # the failed job is the head again
    assert states(dsn) == ["queued", "blocked"]
    assert claim_and_finish(dsn) == [first]
    assert claim_and_finish(dsn) == [second]
    queue.close_sync()


def test_deleting_a_held_failure_lets_the_rest_go_on(dsn, queue, step):
    seq = step.with_options(sequence_key="pruned", max_attempts=1)
    first, second = (seq.enqueue_sync(key="p", n=n).id for n in range(2))
    claim_and_finish(dsn, fail=True)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (first,))
    assert claim_and_finish(dsn) == [second]
    queue.close_sync()


def test_continue_lets_the_rest_go_on_and_a_retry_waits_its_turn(dsn, queue, step):
    seq = step.with_options(sequence_key="cont", sequence_on_failure="continue", max_attempts=1)
    first, second, third = (seq.enqueue_sync(key="c", n=n).id for n in range(3))
    assert claim_and_finish(dsn, fail=True) == [first]
    assert states(dsn) == ["failed", "queued", "blocked"]
    # Retried while the sequence is busy: it waits, and runs next (it is the oldest).
    queue.retry_sync(first)
    assert states(dsn) == ["blocked", "queued", "blocked"]
    assert claim_and_finish(dsn) == [second]
    assert claim_and_finish(dsn) == [first]
    assert claim_and_finish(dsn) == [third]
    assert sequence_rows(dsn) == []
    queue.close_sync()


def test_cancelling_a_blocked_job_or_the_head(dsn, queue, step):
    seq = step.with_options(sequence_key="cancel")
    ids = [seq.enqueue_sync(key="x", n=n).id for n in range(4)]
    assert queue.cancel_sync(ids[1]) is JobState.BLOCKED
    assert states(dsn) == ["queued", "cancelled", "blocked", "blocked"]
    assert queue.cancel_sync(ids[0]) is JobState.QUEUED  # the head: the next one goes
    assert states(dsn) == ["cancelled", "cancelled", "queued", "blocked"]
    assert claim_and_finish(dsn) == [ids[2]]
    assert claim_and_finish(dsn) == [ids[3]]
    assert sequence_rows(dsn) == []
    queue.close_sync()


def test_a_rolled_back_enqueue_leaves_no_job_and_no_count(dsn, queue, step):
    with psycopg.connect(dsn) as conn:
        step.with_options(conn=conn, sequence_key="rb").enqueue_sync(key="r", n=0)
        conn.rollback()
    assert states(dsn) == []
    assert sequence_rows(dsn) == []
    first = step.with_options(sequence_key="rb").enqueue_sync(key="r", n=1)
    assert states(dsn) == ["queued"]  # counted from nothing: the rolled-back job is gone
    with psycopg.connect(dsn) as conn:
        step.with_options(conn=conn, sequence_key="rb").enqueue_sync(key="r", n=2)
        conn.rollback()
    assert sequence_rows(dsn) == [("rb", 1)]
    assert claim_and_finish(dsn) == [first.id]
    assert sequence_rows(dsn) == []
    queue.close_sync()


def test_a_job_finishing_while_the_next_is_being_enqueued_queues_it(dsn, queue, step):
    # The enqueue holds the sequence's row (uncommitted) when the head finishes: the
    # finish waits for it, then sees the new job (a fresh snapshot) and queues it.
    seq = step.with_options(sequence_key="race")
    head = seq.enqueue_sync(key="r", n=0).id
    worker = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as claimer:
        [claimed] = driver_sync.claim(PsycopgExecutor(claimer), [QUEUE], 10, worker)
    finished = threading.Event()
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                driver_sync.complete_succeeded(PsycopgExecutor(conn), [head], [None], [1])
            finished.set()
        except BaseException as exc:  # reported below
            errors.append(exc)

    with psycopg.connect(dsn) as enqueuer:
        nxt = seq.with_options(conn=enqueuer).enqueue_sync(key="r", n=1).id
        thread = threading.Thread(target=finish)
        thread.start()
        with psycopg.connect(dsn, autocommit=True) as watcher:
            waiting = 0
            for _ in range(WAIT_S * 50):
                [(waiting,)] = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ).fetchall()
                if waiting:
                    break
                watcher.execute("SELECT pg_sleep(0.02)")
            assert waiting
        assert not finished.is_set()
        enqueuer.commit()
    thread.join(timeout=WAIT_S)
    assert errors == []
    assert claimed.id == head
    assert states(dsn) == ["succeeded", "queued"]
    assert claim_and_finish(dsn) == [nxt]
    queue.close_sync()


async def test_in_bulk_and_over_http(dsn, queue, step):
    seq = step.with_options(sequence_key="bulk")
    results = await queue.enqueue_many([seq.job(key="b", n=n) for n in range(3)])
    assert [r.duplicate for r in results] == [False] * 3
    assert states(dsn) == ["queued", "blocked", "blocked"]
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        body = {"task": "sequence.step", "args": {"key": "b", "n": 3}, "sequence_key": "bulk"}
        posted = await client.post("/v1/jobs", json=body | {"sequence_on_failure": "continue"})
        assert posted.status_code == 202, posted.text
        assert posted.json()["state"] == "blocked"
        assert posted.json()["sequence_on_failure"] == "continue"
        batch = await client.post("/v1/jobs/batch", json={"jobs": [body, body]})
        assert batch.status_code == 202, batch.text
        listed = await client.get("/v1/jobs", params={"state": "blocked"})
        assert len(listed.json()["jobs"]) == 5
        refused = await client.post("/v1/jobs", json=body | {"idempotency_key": "k"})
        assert refused.status_code == 422, refused.text


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sequence_key": ""}, "sequence_key must be a string"),
        ({"sequence_key": "k", "idempotency_key": "i"}, "not idempotency_key and sequence_key"),
        ({"sequence_key": "k", "unique_for": 5}, "not unique_for and sequence_key"),
        ({"sequence_key": "k", "debounce": 5}, "not debounce and sequence_key"),
        ({"sequence_on_failure": "hold"}, "needs a sequence_key"),
        ({"sequence_key": "k", "sequence_on_failure": "skip"}, "'hold' or 'continue'"),
    ],
)
def test_bad_options_are_refused(queue, options, match):
    with pytest.raises(InvalidJobError, match=match):
        queue.build("sequence.step", {}, **options)


@pytest.mark.slow
def test_three_workers_run_each_sequence_one_at_a_time_in_order(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ledger (job_id bigint PRIMARY KEY, key text NOT NULL, n int NOT NULL, "
            "pid int NOT NULL, started timestamptz NOT NULL, finished timestamptz)"
        )
    keys = [f"k{i}" for i in range(6)]
    per_key = 15
    queue = pgqueue.Queue(dsn)

    def build(n: int) -> list[Any]:
        # Interleaved keys, in one batch: each key's jobs in the batch's order.
        return [
            queue.build("sequence.step", {"key": k, "n": n}, queue=QUEUE, sequence_key=k)
            for k in keys
        ]

    queue.enqueue_many_sync([spec for n in range(5) for spec in build(n)])
    workers = [
        WorkerProcess(
            "sequence_app:queue",
            dsn,
            # Two slots each for six sequences at a time: no one worker can hold them all,
            # so the work is shared between the processes.
            "--concurrency",
            "2",
            "--log-level",
            "warning",
            env={"LEDGER_DSN": dsn},
        )
        for _ in range(3)
    ]
    try:
        # More of every sequence while the workers run (enqueues racing finishes).
        for n in range(5, per_key):
            queue.enqueue_many_sync(build(n))
        total = len(keys) * per_key
        wait_for_sql(
            dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'", total, timeout=180
        )
        assert [w.stop() for w in workers] == [0, 0, 0]
    finally:
        for w in workers:
            w.close()
        queue.close_sync()
    with psycopg.connect(dsn) as conn:
        ledger = conn.execute(
            "SELECT key, n, job_id, pid, started, finished FROM ledger ORDER BY key, job_id"
        ).fetchall()
        leftover = conn.execute("SELECT count(*) FROM pgqueue.sequences").fetchone()
    assert len(ledger) == total  # every job ran once
    assert leftover == (0,)
    for key in keys:
        runs = [r for r in ledger if r[0] == key]
        assert [r[1] for r in runs] == list(range(per_key))  # enqueue order
        for before, after in itertools.pairwise(runs):
            assert after[4] >= before[5], (key, before, after)  # start after the finish
    assert len({r[3] for r in ledger}) >= 2  # the work was shared between processes


def test_the_sequence_status_view(dsn, queue, step):
    seq = step.with_options(sequence_key="viewed", max_attempts=1)
    first = seq.enqueue_sync(key="v", n=0).id
    seq.enqueue_sync(key="v", n=1)
    with psycopg.connect(dsn) as conn:
        view = (
            "SELECT sequence_key, unfinished, head_job_id, head_state::text, head_queue "
            "FROM pgqueue.sequence_status"
        )
        assert conn.execute(view).fetchall() == [("viewed", 2, first, "queued", QUEUE)]
        claim_and_finish(dsn, fail=True)  # holds the rest
        assert conn.execute(view).fetchall() == [("viewed", 2, first, "failed", QUEUE)]
    queue.close_sync()


async def test_sequences_are_listed_by_the_admin_and_the_api(dsn, queue, step):
    seq = step.with_options(sequence_key="listed")
    first = (await seq.enqueue(key="l", n=0)).id
    await seq.enqueue(key="l", n=1)
    await step.with_options(sequence_key="alone").enqueue(key="a", n=0)
    admin = pgqueue.Admin(queue)
    listed = await admin.list_sequences()
    assert [(s.sequence_key, s.unfinished) for s in listed] == [("alone", 1), ("listed", 2)]
    assert (listed[1].head_job_id, listed[1].head_state) == (first, JobState.QUEUED)
    assert admin.list_sequences_sync(limit=1)[0].sequence_key == "alone"
    with pytest.raises(InvalidJobError, match="limit"):
        await admin.list_sequences(limit=0)
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        got = await client.get("/v1/sequences")
        assert got.status_code == 200, got.text
        assert got.json()["sequences"][1] == {
            "sequence_key": "listed",
            "unfinished": 2,
            "head_job_id": first,
            "head_state": "queued",
            "head_queue": QUEUE,
        }
        assert (await client.get("/v1/sequences", params={"limit": 0})).status_code == 400
