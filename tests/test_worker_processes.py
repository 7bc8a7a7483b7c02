"""Real worker processes: sharing work through the database alone, exactly once;
SIGTERM with a grace period; JSON logs with the job's context bound."""

from __future__ import annotations

import signal
import time

import psycopg
import pytest
from workerproc import WorkerProcess, wait_for_sql

import pgqueue


@pytest.mark.slow
def test_four_worker_processes_run_ten_thousand_jobs_exactly_once(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger (n int NOT NULL, pid int NOT NULL)")
    queue = pgqueue.Queue(dsn)
    queue.enqueue_many_sync(
        [queue.build("ledger.record", {"n": n}, queue="race") for n in range(10_000)]
    )
    queue.close_sync()
    workers = [
        WorkerProcess(
            "ledger_app:queue",
            dsn,
            "--concurrency",
            "20",
            "--log-level",
            "warning",
            env={"LEDGER_DSN": dsn},
        )
        for _ in range(4)
    ]
    try:
        wait_for_sql(
            dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'", 10_000, timeout=180
        )
        assert [w.stop() for w in workers] == [0, 0, 0, 0]
    finally:
        for w in workers:
            w.close()
    with psycopg.connect(dsn) as conn:
        total, distinct, pids = conn.execute(
            "SELECT count(*), count(DISTINCT n), count(DISTINCT pid) FROM ledger"
        ).fetchone()
        states = dict(conn.execute("SELECT state::text, count(*) FROM pgqueue.jobs GROUP BY 1"))
        attempts = conn.execute("SELECT max(attempts) FROM pgqueue.jobs").fetchone()[0]
    assert (total, distinct) == (10_000, 10_000)  # every job ran, none twice
    assert states == {"succeeded": 10_000}
    assert attempts == 1
    assert pids >= 2  # the work was shared


def test_sigterm_lets_running_jobs_finish_within_the_grace_period(dsn):
    queue = pgqueue.Queue(dsn)
    ids = [
        queue.enqueue_sync("slow.nap", {"seconds": 1.0}, queue="slow").id,
        queue.enqueue_sync("slow.sync_nap", {"seconds": 1.0}, queue="slow").id,
    ]
    worker = WorkerProcess("slow_app:queue", dsn, "--grace-period", "20", "--log-level", "debug")
    try:
        # Started, not merely claimed: a job claimed when the signal lands is handed
        # back unstarted instead.
        worker.wait_for_event("job_started", count=2, timeout=30)
        began = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert time.monotonic() - began < 20
        jobs = [queue.get_job_sync(i) for i in ids]
        assert [(j.state, j.result) for j in jobs if j] == [("succeeded", "rested")] * 2
        events = [e["event"] for e in worker.events()]
        assert "worker_draining" in events
        assert events[-1] == "worker_stopped"
    finally:
        worker.close()
        queue.close_sync()


@pytest.mark.parametrize("task", ["slow.nap", "slow.sync_nap"])
def test_jobs_still_running_after_the_grace_period_go_back_to_the_queue(dsn, task):
    queue = pgqueue.Queue(dsn)
    job_id = queue.enqueue_sync(task, {"seconds": 60}, queue="slow").id
    worker = WorkerProcess("slow_app:queue", dsn, "--grace-period", "0.5", "--log-level", "debug")
    try:
        worker.wait_for_event("job_started", timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0  # well before the 60 s task would end
        job = queue.get_job_sync(job_id)
        assert job is not None
        assert (job.state, job.attempts) == ("queued", 1)
        assert "worker stopped before the job finished" in job.errors[0]["message"]
    finally:
        worker.close()
        queue.close_sync()


def test_a_second_signal_stops_at_once(dsn):
    queue = pgqueue.Queue(dsn)
    job_id = queue.enqueue_sync("slow.nap", {"seconds": 60}, queue="slow").id
    worker = WorkerProcess("slow_app:queue", dsn, "--grace-period", "120", "--log-level", "debug")
    try:
        worker.wait_for_event("job_started", timeout=30)
        worker.signal(signal.SIGTERM)
        worker.wait_for_event("worker_draining")
        worker.signal(signal.SIGINT)
        assert worker.wait(20) == 0
        job = queue.get_job_sync(job_id)
        assert job is not None
        assert job.state == "queued"
    finally:
        worker.close()
        queue.close_sync()


def test_logs_are_json_events_with_the_job_context_bound(dsn):
    """At the default level a job that succeeds logs one line, job_succeeded with its
    duration; its start is logged at debug."""
    queue = pgqueue.Queue(dsn)
    job_ids = [queue.enqueue_sync("slow.nap", {"seconds": 0}, queue="slow").id for _ in range(2)]
    worker = WorkerProcess("slow_app:queue", dsn)
    debug = None
    try:
        worker.wait_for_event("job_succeeded", count=2)
        assert worker.stop() == 0
        stopped = worker.wait_for_event("worker_stopped")
        events = worker.events()
        debug = WorkerProcess("slow_app:queue", dsn, "--log-level", "debug")
        job_id = queue.enqueue_sync("slow.nap", {"seconds": 0}, queue="slow").id
        started = debug.wait_for_event("job_started")
        assert debug.stop() == 0
    finally:
        worker.close()
        if debug is not None:
            debug.close()
        queue.close_sync()
    started_line = next(e for e in events if e["event"] == "worker_started")
    assert (started_line["concurrency"], started_line["threads"]) == (200, 10)
    per_job = [e for e in events if "job_id" in e]
    assert sorted(e["job_id"] for e in per_job) == job_ids  # one line per job
    for event in per_job:
        assert event["event"] == "job_succeeded"
        assert event["queue"] == "slow"
        assert event["task"] == "slow.nap"
        assert event["attempt"] == 1
        assert event["level"] == "info"
        assert event["duration_ms"] >= 0
        assert "timestamp" in event
    assert (started["job_id"], started["task"], started["level"]) == (job_id, "slow.nap", "debug")
    assert (stopped["claimed"], stopped["succeeded"]) == (2, 2)
    assert stopped["completion_writes"] >= 1
