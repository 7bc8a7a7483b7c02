"""The scheduler in real worker processes: three workers, a one-second schedule, one
worker SIGKILLed midway. Every tick gets exactly one job, and none is missing while any
worker lives. Correctness only: no timing is asserted."""

from __future__ import annotations

import itertools
import signal
from datetime import timedelta

import psycopg
import pytest
from workerproc import WorkerProcess, wait_for_sql

TICKS = "SELECT count(*) FROM pgqueue.schedule_ticks WHERE schedule = 'every-second'"


def ticks_after(count: int) -> str:
    """A query that is true once ``count`` ticks have been enqueued."""
    return f"SELECT ({TICKS}) >= {count}"


@pytest.mark.slow
def test_three_workers_one_killed_enqueue_every_tick_exactly_once(dsn):
    workers = [
        WorkerProcess("schedule_app:queue", dsn, "--log-level", "info", "--lease", "5")
        for _ in range(3)
    ]
    try:
        for worker in workers:
            worker.wait_for_event("schedules_declared", timeout=60)
        wait_for_sql(dsn, ticks_after(10), expected=True, timeout=120)
        workers[0].signal(signal.SIGKILL)
        workers[0].wait(30)
        with psycopg.connect(dsn, autocommit=True) as conn:
            (at_kill,) = conn.execute("SELECT max(tick) FROM pgqueue.schedule_ticks").fetchone()
        wait_for_sql(dsn, ticks_after(20), expected=True, timeout=120)
        assert [w.stop() for w in workers[1:]] == [0, 0]
    finally:
        for worker in workers:
            worker.close()
    with psycopg.connect(dsn) as conn:
        ticks = conn.execute(
            "SELECT tick, job_id, manual FROM pgqueue.schedule_ticks"
            " WHERE schedule = 'every-second' ORDER BY tick"
        ).fetchall()
        jobs = conn.execute(
            "SELECT id, run_at, jsonb_array_length(errors) > 0 AS rescued "
            "FROM pgqueue.jobs WHERE task = 'schedule.beat' ORDER BY id"
        ).fetchall()
    assert len(ticks) >= 20
    # One job per tick, and no job that is not a tick's.
    tick_of = {job_id: tick for tick, job_id, _ in ticks}
    assert sorted(job_id for job_id, _, _ in jobs) == sorted(tick_of)
    # Due at its tick; unless it was running on the killed worker, whose job the rescue
    # queued again (run_at now, an error entry saying the worker was lost).
    assert [job_id for job_id, run_at, rescued in jobs if run_at != tick_of[job_id]] == [
        job_id for job_id, _, rescued in jobs if rescued
    ]
    assert not any(manual for *_, manual in ticks)
    # Consecutive seconds from the first tick to the last: none skipped, across the kill.
    instants = [tick for tick, *_ in ticks]
    assert all(t.microsecond == 0 for t in instants)
    assert [b - a for a, b in itertools.pairwise(instants)] == [timedelta(seconds=1)] * (
        len(instants) - 1
    )
    assert instants[0] <= at_kill < instants[-1]
