"""The server's timeline (migration 0020, pgqueue.timeline): what a worker notes, and
the hold of claims after a change. A real promotion, with a job whose claim was lost,
is in tests/test_failover.py; here the pieces, on one server."""

from __future__ import annotations

import asyncio
import time

import psycopg
import structlog
from faultkit import wait_until_async

import pgqueue
from pgqueue.testing import running_worker, wait_for_job
from pgqueue.timeline import Timeline, TimelineWatch
from pgqueue.worker.failover import FailoverGuard

# --- the watch (no I/O) -----------------------------------------------------------------


def test_the_first_note_needs_no_check_and_a_new_timeline_does():
    watch = TimelineWatch()
    assert watch.note(Timeline(1, 0.0), now=100.0) is False
    assert watch.checked == 1
    assert watch.held_for(100.0) == 0.0
    assert watch.note(Timeline(1, 0.0), now=101.0) is False
    # A promotion: the jobs running here must be checked, and claims wait.
    assert watch.note(Timeline(2, 15.0), now=102.0) is True
    assert watch.held_for(102.0) == 15.0
    assert watch.held_for(110.0) == 7.0
    assert watch.held_for(117.0) == 0.0
    # Still to check until checked, however often it is noted.
    assert watch.note(Timeline(2, 5.0), now=103.0) is True
    watch.checked = 2
    assert watch.note(Timeline(2, 0.0), now=104.0) is False


def test_a_shorter_hold_noted_later_does_not_shorten_the_one_running():
    watch = TimelineWatch()
    watch.note(Timeline(3, 15.0), now=0.0)
    watch.note(Timeline(3, 1.0), now=1.0)
    assert watch.held_for(10.0) == 5.0


def test_a_worker_that_first_sees_a_hold_waits_for_it():
    """A worker started just after a failover: nothing of its own to check, the hold
    still to wait."""
    watch = TimelineWatch()
    assert watch.note(Timeline(2, 4.0), now=50.0) is False
    assert watch.held_for(51.0) == 3.0


# --- the guard's hold (the worker's loop, no database) ----------------------------------


async def test_a_hold_noted_again_keeps_its_timer_and_follows_an_end_moved_on():
    """The heartbeat and every new connection note the timeline, so a hold is noted many
    times while it runs: one timer serves them all (a note does not re-arm it), and a
    note whose hold ends later keeps the claims closed until then."""
    guard = FailoverGuard()
    try:
        guard.noted(Timeline(1, 0.0))  # the first note: no hold
        assert guard.claims_open.is_set()
        started = time.monotonic()
        guard.noted(Timeline(1, 0.3))
        assert not guard.claims_open.is_set()
        timer = guard._reopen
        guard.noted(Timeline(1, 0.3))  # the same hold, seen again
        assert guard._reopen is timer
        await asyncio.sleep(0.1)
        guard.noted(Timeline(1, 0.5))  # moved on: now ends 0.6 s after the start
        assert guard._reopen is timer
        await asyncio.wait_for(guard.claims_open.wait(), 10)
        assert time.monotonic() - started >= 0.6
        assert guard.watch.held_for(time.monotonic()) == 0.0
    finally:
        guard.close()


# --- pgqueue.note_timeline() ----------------------------------------------------------------


def note(conn: psycopg.Connection) -> tuple[int, float]:
    row = conn.execute("SELECT timeline, claims_held_for FROM pgqueue.note_timeline()").fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def test_note_timeline_records_the_first_and_holds_after_a_change(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        (server,) = conn.execute(
            "SELECT ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::bigint"
        ).fetchone()
        assert conn.execute("SELECT count(*) FROM pgqueue.server_timeline").fetchone() == (0,)
        # The first note ever: recorded, no hold.
        assert note(conn) == (server, 0.0)
        assert note(conn) == (server, 0.0)
        # As a promoted standby has it: the row the old primary wrote names the old
        # timeline. Two workers registered, leases 15 and 40 s: the longest is the hold.
        conn.execute("UPDATE pgqueue.server_timeline SET timeline = timeline - 1")
        for lease in (15, 40):
            conn.execute(
                "INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, lease, "
                "heartbeat_interval) VALUES (gen_random_uuid(), 'h', 1, '{q}', 1, "
                "make_interval(secs => %s), make_interval(secs => 1))",
                (lease,),
            )
        timeline, held = note(conn)
        assert timeline == server
        assert 39.0 < held <= 40.0
        # Every later note (another worker, a new connection) sees what is left of it.
        timeline, held_later = note(conn)
        assert timeline == server
        assert 0 < held_later <= held
        row = conn.execute("SELECT timeline, claims_held FROM pgqueue.server_timeline").fetchone()
        assert row is not None
        assert row[0] == server
        assert row[1].total_seconds() == 40.0


async def test_a_worker_started_during_a_hold_claims_nothing_until_it_ends(dsn):
    """The hold as the database records it (a failover seen by another worker a moment
    ago): a worker starting now waits for the rest of it before its first claim, and
    says so."""
    queue = pgqueue.Queue(dsn)

    @queue.task(name="after_hold", queue="timeline")
    async def after_hold() -> None:
        pass

    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            note(conn)
            conn.execute(
                "UPDATE pgqueue.server_timeline SET changed_at = now(), "
                "claims_held = interval '2 seconds'"
            )
        job = await queue.enqueue("after_hold", {})
        with structlog.testing.capture_logs() as logs:
            async with running_worker(queue, queues=["timeline"]):
                done = await wait_for_job(queue, job.id, timeout=30)
        assert done.state == pgqueue.JobState.SUCCEEDED
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT j.started_at >= t.changed_at + t.claims_held "
                "FROM pgqueue.jobs j, pgqueue.server_timeline t WHERE j.id = %s",
                (job.id,),
            ).fetchone()
        assert row == (True,)
        events = [e["event"] for e in logs]
        assert "claims_held" in events
        assert "claims_resumed" in events
        # Nothing to check: the worker never saw another timeline.
        assert "failover_detected" not in events
    finally:
        await queue.close()


async def test_the_heartbeat_notes_the_timeline_too(dsn):
    """A hold recorded while the worker runs (as behind PgBouncer, where no connection
    of its pool is new) reaches it by its next heartbeat."""
    queue = pgqueue.Queue(dsn)
    try:
        with structlog.testing.capture_logs() as logs:
            async with running_worker(queue, queues=["timeline"], lease=1.0):
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        "UPDATE pgqueue.server_timeline SET changed_at = now(), "
                        "claims_held = interval '1 second'"
                    )
                await wait_until_async(  # the beat comes every 0.2 s
                    "claims_held", lambda: any(e["event"] == "claims_held" for e in logs), 10
                )
    finally:
        await queue.close()
