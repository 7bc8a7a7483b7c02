"""Leases, heartbeats and rescue: a committed job runs to a recorded end whatever dies,
and a worker that comes back from the dead never writes over the job's new owner."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from workerproc import WorkerProcess, wait_for_sql

import pgqueue
from pgqueue import JobState, driver_sync
from pgqueue.dberrors import connection_failed
from pgqueue.executors import PsycopgExecutor
from pgqueue.locks import RESCUE
from pgqueue.sql import query
from pgqueue.testing import running_worker, wait_for_job
from pgqueue.worker.heartbeat import fence_in, fence_margin, must_fence


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
                "SELECT id::text, pid, queues, concurrency, started_at, lease, "
                "heartbeat_interval FROM pgqueue.workers"
            )
            rows = await cur.fetchall()
            assert len(rows) == 1
            worker_id, pid, queues, concurrency, started_at, lease, interval = rows[0]
            assert worker_id == worker.worker_id
            assert (queues, concurrency) == (["reg"], 3)
            # Its own lease, by which others judge it.
            assert (lease, interval) == (timedelta(seconds=0.5), timedelta(seconds=0.1))
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
    doomed = WorkerProcess("slow_app:queue", dsn, "--lease", "1", "--log-level", "debug")
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
    frozen = WorkerProcess("slow_app:queue", dsn, "--lease", "1.5", "--log-level", "debug")
    heir = None
    try:
        frozen.wait_for_event("job_started")
        frozen.signal(signal.SIGSTOP)  # cut off: no heartbeat, no progress
        heir = WorkerProcess("slow_app:queue", dsn, "--lease", "1.5", "--log-level", "debug")
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


def _job_held_by_a_dead_worker(
    dsn: str, *, silent_for: float = 3600, lease: float | None = None
) -> tuple[int, str]:
    """A running job (attempt 1) whose worker's last heartbeat is ``silent_for`` seconds
    old (an hour by default); the worker recorded ``lease`` seconds as its lease (None:
    a worker from before it was recorded, with neither lease nor heartbeat interval)."""
    job_id = pgqueue.Queue(dsn).enqueue_sync("lost.task", {}).id
    worker_id = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgqueue.workers "
            "(id, host, pid, queues, concurrency, last_heartbeat, lease, heartbeat_interval) "
            "VALUES (%s, 'elsewhere', 1, '{}', 1, now() - make_interval(secs => %s), "
            "make_interval(secs => %s), make_interval(secs => %s::float8 / 5))",
            (worker_id, silent_for, lease, lease),
        )
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now(), "
            "worker_id = %s WHERE id = %s",
            (worker_id, job_id),
        )
    return job_id, worker_id


def _rescue(dsn: str, lease: float = 1.0) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.RawCursor(conn) as cur:
        return [r[0] for r in cur.execute(query("rescue_jobs"), (lease, RESCUE.key)).fetchall()]


def test_one_rescuer_at_a_time_and_the_election_ends_with_its_statement(dsn):
    job_id, worker_id = _job_held_by_a_dead_worker(dsn)
    with psycopg.connect(dsn) as rescuer:  # another worker, mid-rescue
        rescuer.execute("SELECT pg_advisory_xact_lock(%s)", (RESCUE.key,))
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
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone() == (0,)
    assert _job_row(dsn, job_id)[:2] == ("queued", 1)


def test_a_completion_never_committed_is_ended_after_the_lease_and_its_job_rescued(dsn):
    """A transactional task's worker froze between marking its job succeeded and COMMIT:
    the job's row is locked, so no rescue could take it, until the server ends the idle
    transaction (the completing statement limits it to the lease)."""
    job_id, worker_id = _job_held_by_a_dead_worker(dsn)
    frozen = psycopg.connect(dsn)
    try:
        done = driver_sync.complete_in_transaction(
            PsycopgExecutor(frozen), job_id, 1, None, worker_id=worker_id, idle_limit=0.5
        )
        assert done
        assert _rescue(dsn) == []  # the row is locked by the uncommitted completion
        # The client never sends COMMIT; the server gives up on it.
        wait_for_sql(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid = {frozen.info.backend_pid}",
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
        assert driver_sync.complete_in_transaction(
            PsycopgExecutor(conn), job_id, 1, None, worker_id=worker_id, idle_limit=0.2
        )
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("200ms",)
        conn.commit()
        # Back to the session's own setting: a pooled connection keeps no limit.
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("0",)
        conn.rollback()
    assert _job_row(dsn, job_id)[0] == "succeeded"


# --- every worker judged by its own lease --------------------------------------------


async def test_a_short_lease_rescuer_never_takes_the_job_of_a_live_long_lease_worker(dsn):
    """A rolling deploy that shortens the lease: worker A (lease 5 s, a beat every 1 s)
    runs a job lasting three of its beats, while worker B (lease 0.5 s) tries the rescue
    every 0.1 s beside it. B judges A by A's own lease: the job runs once, never rescued."""
    queue = pgqueue.Queue(dsn)
    job_id = (await queue.enqueue("slow.nap", {"seconds": 3}, queue="slow")).id
    # B serves another queue: a rescued job would stay visible, and A alone runs it.
    async with running_worker(queue, queues=["elsewhere"], lease=0.5) as rescuer:
        owner = WorkerProcess("slow_app:queue", dsn, "--lease", "5", "--log-level", "debug")
        try:
            job = await wait_for_job(queue, job_id, timeout=30)
            await asyncio.to_thread(owner.wait_for_event, "job_succeeded")
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                cur = await conn.execute(
                    "SELECT lease, heartbeat_interval, last_heartbeat - started_at "
                    "FROM pgqueue.workers WHERE pid = %s",
                    (owner.pid,),
                )
                row = await cur.fetchone()
            assert await asyncio.to_thread(owner.stop) == 0
            events = [e["event"] for e in owner.events()]
        finally:
            owner.close()
        assert rescuer.heartbeat is not None
        beats, rescued = rescuer.heartbeat.beats, rescuer.heartbeat.rescued
    await queue.close()
    assert (job.state, job.attempts, job.errors, job.result) == (
        JobState.SUCCEEDED,
        1,
        [],
        "rested",
    )
    assert events.count("job_started") == 1
    assert "worker_declared_dead" not in events
    # A kept its first entry, beating across the job, under its own lease...
    assert row is not None
    lease, interval, beating_for = row
    assert (lease, interval) == (timedelta(seconds=5), timedelta(seconds=1))
    assert beating_for >= timedelta(seconds=2)
    # ...while B tried the rescue dozens of times and took nothing.
    assert beats >= 15
    assert rescued == 0


def test_a_dead_short_lease_worker_is_rescued_by_a_long_lease_rescuer(dsn):
    """The other way round: a worker with a 1 s lease, silent for 3 s, is dead, even to
    a rescuer whose own lease is a minute; one silent for less than its lease is not."""
    dead_job, dead_worker = _job_held_by_a_dead_worker(dsn, silent_for=3, lease=1)
    live_job, _ = _job_held_by_a_dead_worker(dsn, silent_for=3, lease=5)
    assert _rescue(dsn, lease=60) == [dead_job]
    assert _job_row(dsn, dead_job)[:2] == ("queued", 1)
    assert _job_row(dsn, live_job)[:2] == ("running", 1)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.workers WHERE id = %s", (dead_worker,)
        ).fetchone() == (0,)


def test_a_long_lease_worker_is_not_rescued_by_a_short_lease_rescuer(dsn):
    job_id, worker_id = _job_held_by_a_dead_worker(dsn, silent_for=3, lease=20)
    assert _rescue(dsn, lease=0.5) == []
    assert _job_row(dsn, job_id)[:2] == ("running", 1)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pgqueue.workers WHERE id = %s", (worker_id,)
        ).fetchone() == (1,)


def test_a_worker_that_recorded_no_lease_is_judged_by_at_least_the_old_default(dsn):
    """A worker of a release before leases were recorded (mid rolling deploy): the
    rescuer's lease, but never less than 15 s, the default lease of that release."""
    recent, _ = _job_held_by_a_dead_worker(dsn, silent_for=5)  # beats every 3 s by default
    stale, _ = _job_held_by_a_dead_worker(dsn, silent_for=20)
    long_gone, _ = _job_held_by_a_dead_worker(dsn, silent_for=3600)
    # A short-lease rescuer does not take a recent one: 15 s, not its own 1 s.
    assert sorted(_rescue(dsn, lease=1)) == sorted([stale, long_gone])
    assert _job_row(dsn, recent)[0] == "running"
    # A rescuer with a longer lease than 15 s goes by its own, as that release did.
    older, _ = _job_held_by_a_dead_worker(dsn, silent_for=20)
    assert _rescue(dsn, lease=30) == []
    assert _rescue(dsn, lease=10) == [older]
    assert _job_row(dsn, recent)[0] == "running"


def test_a_job_claimed_before_workers_registered_gets_at_least_the_old_default(dsn):
    """A running job without a worker_id (claimed before 0002) is judged by the same
    rule as a worker that recorded no lease, from the job's start."""
    queue = pgqueue.Queue(dsn)
    recent = queue.enqueue_sync("lost.task", {}).id
    stale = queue.enqueue_sync("lost.task", {}).id
    queue.close_sync()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, started_at = now() - "
            "CASE WHEN id = %s THEN interval '5 seconds' ELSE interval '20 seconds' END "
            "WHERE id IN (%s, %s)",
            (recent, recent, stale),
        )
    assert _rescue(dsn, lease=1) == [stale]
    assert _job_row(dsn, recent)[0] == "running"


def test_a_worker_entry_with_a_nonsensical_lease_is_refused(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        insert = (
            "INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, lease, "
            "heartbeat_interval) VALUES (gen_random_uuid(), 'h', 1, '{}', 1, %s, %s)"
        )
        for lease, interval in [
            ("0 s", "0.1 s"),  # no lease at all
            ("-1 s", None),
            ("1 s", "0 s"),  # never beats
            ("1 s", "1 s"),  # beats no more often than its lease: dead between beats
        ]:
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, (lease, interval))
        assert conn.execute("SELECT count(*) FROM pgqueue.workers").fetchone() == (0,)


@pytest.mark.parametrize("lease", [0.0, -1.0, 0.0001, float("nan"), float("inf"), 1e13])
def test_a_lease_the_database_cannot_record_is_refused_at_once(lease):
    with pytest.raises(ValueError, match="lease must be between"):
        pgqueue.Worker(pgqueue.Queue("postgresql://unused"), queues=["q"], lease=lease)


# --- self-fencing ----------------------------------------------------------------------


def test_the_fence_falls_a_lease_minus_the_margin_after_the_last_beat_was_sent():
    lease = 15.0
    margin = fence_margin(lease)
    assert margin == 3.0  # a fifth: one heartbeat interval
    sent = 1000.0  # time.monotonic() when the last beat the database took was sent
    assert fence_in(sent, sent + 5.0, lease=lease, margin=margin) == 7.0
    assert not must_fence(sent, sent + 11.999, lease=lease, margin=margin)
    assert must_fence(sent, sent + 12.0, lease=lease, margin=margin)
    # The rescue can come a whole lease after the database took the beat, which it did
    # no sooner than it was sent: the fence always falls a margin before.
    assert sent + lease - fence_in(sent, sent, lease=lease, margin=margin) == sent + margin
    # A worker frozen (SIGSTOP) or cut off past its lease fences at once when it runs.
    assert must_fence(sent, sent + 3600, lease=lease, margin=margin)
    # A beat sent before the silence that is answered only now is no fresh lease: it
    # counts from when it was sent, so the fence stays.
    late_answer = sent + 13.0
    assert must_fence(sent + 0.5, late_answer, lease=lease, margin=margin)


async def test_a_worker_without_beats_for_most_of_its_lease_gives_up_its_jobs_and_hands_them_back(
    dsn,
):
    """The beats fail (as when the link is cut) and no one rescues: the worker fences
    itself before its lease is out (its job cancelled, claims stopped); once a beat
    gets through it hands the job back and claims again, under the same id."""
    queue = pgqueue.Queue(dsn)
    runs: list[str] = []
    started = [asyncio.Event(), asyncio.Event()]
    cancelled = asyncio.Event()

    @queue.task(name="fenced", queue="fence")
    async def fenced() -> str:
        run = len(runs)
        runs.append("started")
        started[min(run, 1)].set()
        try:
            await asyncio.sleep(60 if run == 0 else 0)
        except asyncio.CancelledError:
            runs[run] = "cancelled"
            cancelled.set()
            raise
        runs[run] = "finished"
        return "done"

    @queue.task(name="later", queue="fence")
    async def later() -> float:
        return time.monotonic()

    async with running_worker(queue, lease=1.0, poll_interval=0.1) as worker:
        heartbeat = worker.heartbeat
        assert heartbeat is not None
        worker_id = worker.worker_id
        job_id = (await fenced.enqueue()).id
        await asyncio.wait_for(started[0].wait(), 10)
        cut = threading.Event()
        cut.set()
        beat = heartbeat.run_round

        def beat_unless_cut() -> None:
            if cut.is_set():
                raise psycopg.OperationalError("the link is down (simulated)")
            beat()

        heartbeat.run_round = beat_unless_cut  # type: ignore[method-assign]
        cut_at = time.monotonic()
        await asyncio.wait_for(cancelled.wait(), 10)
        # Before the lease (1 s) ran out: 0.8 s after the last beat was sent, at most.
        assert time.monotonic() - cut_at < 1.0
        # Given up here, but still this worker's in the database, where no one took it.
        assert _job_row(dsn, job_id)[:2] == ("running", 1)
        later_id = (await later.enqueue()).id  # not claimed while fenced
        cut.clear()
        back_at = time.monotonic()
        done = await wait_for_job(queue, job_id, timeout=20)
        ran_later = await wait_for_job(queue, later_id, timeout=20)
        assert worker.worker_id == worker_id  # not declared dead: no new id
    # Handed back as if never claimed (no one's fault), then run to the end.
    assert (done.state, done.attempts, done.errors, done.result) == (
        JobState.SUCCEEDED,
        1,
        [],
        "done",
    )
    assert runs == ["cancelled", "finished"]
    assert ran_later.result > back_at  # claimed only once the beats got through
    await queue.close()
