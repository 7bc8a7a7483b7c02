"""Shared by the fault-injection scenarios (test_faults, test_db_restart): the ledger
app's set-up, worker processes, the run loop, and the invariants every scenario ends
with: every committed job reached a terminal state, no job ran concurrently with
itself, no succeeded job lacks its ledger row, and the job counters match the rows
(counterkit): exact after SIGKILLed workers, server crashes and outages."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
import pytest
from counterkit import assert_counters_match_rows
from workerproc import WorkerProcess

import pgqueue

if TYPE_CHECKING:
    from collections.abc import Callable

WORKERS = 4
LEASE = "1"
# `make soak` runs the scenarios on this many times the jobs (and time); CI runs them once.
SOAK = max(1, int(os.environ.get("PGQUEUE_SOAK", "1")))


@dataclass
class Figures:
    jobs: int = 0
    kills: int = 0
    terminated_backends: int = 0
    restarts: int = 0
    rescues: int = 0
    reruns: int = 0
    overlaps: int = 0
    tx_jobs: int = 0
    tx_not_once: int = 0
    stops: int = 0
    freezes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def report(self, scenario: str) -> str:
        restarts = f"{self.restarts} server restarts, " if self.restarts else ""
        stops = f"{self.stops} workers SIGTERMed mid-job, " if self.stops else ""
        freezes = f"{self.freezes} workers frozen past the lease, " if self.freezes else ""
        notes = "".join(f"; {note}" for note in self.notes)
        return (
            f"{scenario}: {self.jobs} jobs in {self.seconds:.1f} s, {self.kills} workers killed, "
            f"{self.terminated_backends} backends terminated, {restarts}{stops}{freezes}"
            f"{self.rescues} rescues, "
            f"{self.reruns} extra runs (at-least-once: a run whose outcome was lost), "
            f"concurrent runs of one job: {self.overlaps}, transactional jobs whose ledger "
            f"row is not exactly one: {self.tx_not_once} of {self.tx_jobs}{notes}"
        )


def prepare(
    dsn: str,
    jobs: int,
    *,
    tx_every: int = 4,
    pause: tuple[float, float] = (0.0, 0.0),
    seed: int = 1,
) -> None:
    """The ledger table that fault_app's tasks write, and ``jobs`` jobs to run: every
    ``tx_every``-th one transactional (its ledger row written in the transaction that
    completes it), each pausing for a time drawn from ``pause`` seconds."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ledger (n int, job_id bigint, attempt int, pid int, "
            "started timestamptz, finished timestamptz, tx boolean NOT NULL DEFAULT false)"
        )
    rng = random.Random(seed)
    specs = []
    queue = pgqueue.Queue(dsn)
    for n in range(jobs):
        args: dict[str, float] = {"n": n}
        if pause[1] > 0:
            args["pause"] = round(rng.uniform(*pause), 3)
        task = "fault.tx" if tx_every and n % tx_every == 0 else "fault.work"
        specs.append(queue.build(task, args, queue="faults", max_attempts=20))
    queue.enqueue_many_sync(specs)
    queue.close_sync()


def spawn(dsn: str, *extra: str, ledger_dsn: str | None = None) -> WorkerProcess:
    return WorkerProcess(
        "fault_app:queue",
        dsn,
        "--concurrency", "20", "--lease", LEASE, "--poll-interval", "0.5",
        # PGQUEUE_FAULT_LOG_LEVEL=debug keeps every job event, for chasing a failure.
        "--log-level", os.environ.get("PGQUEUE_FAULT_LOG_LEVEL", "warning"), *extra,
        env={"LEDGER_DSN": ledger_dsn or dsn},
    )  # fmt: skip


def unfinished(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running')"
        ).fetchone()
        assert row is not None
        return int(row[0])


def diagnose(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        jobs = conn.execute(
            "SELECT id, state::text, attempts, worker_id::text, run_at - now(), "
            "jsonb_array_length(errors) FROM pgqueue.jobs "
            "WHERE state IN ('queued', 'running') LIMIT 10"
        ).fetchall()
        workers = conn.execute(
            "SELECT id::text, pid, now() - last_heartbeat FROM pgqueue.workers"
        ).fetchall()
    return f"jobs {jobs}; workers {workers}"


def stuck_logs(dsn: str, workers: list[WorkerProcess]) -> str:
    """What the workers holding unfinished running jobs logged about them (their log
    files are gone once the test ends)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT j.id, w.pid FROM pgqueue.jobs j JOIN pgqueue.workers w ON w.id = j.worker_id "
            "WHERE j.state = 'running' LIMIT 5"
        ).fetchall()
    out = []
    for job_id, pid in rows:
        owner = next((w for w in workers if w.pid == pid), None)
        if owner is None:
            out.append(f"job {job_id}: held by pid {pid}, not one of this test's workers")
            continue
        lines = owner.log_path.read_text().splitlines()
        # Loose on purpose: the id may sit in a "job_ids" list as well as in "job_id".
        about = [ln for ln in lines if str(job_id) in ln]
        out.append(f"job {job_id}, worker pid {pid}; its lines:\n" + "\n".join(about[-20:]))
        out.append("the worker's last lines:\n" + "\n".join(lines[-30:]))
    return "\n".join(out)


def check_invariants(dsn: str, figures: Figures, *, maybe_more: int = 0) -> None:
    """Every job in the table succeeded: ``figures.jobs`` of them, plus at most
    ``maybe_more`` whose enqueue's outcome was unknown to its caller; none ran beside
    itself; the job counters match the rows."""
    with psycopg.connect(dsn) as conn:
        states = dict(conn.execute("SELECT state::text, count(*) FROM pgqueue.jobs GROUP BY 1"))
        missing = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs j WHERE j.state = 'succeeded' "
            "AND NOT EXISTS (SELECT FROM ledger l WHERE l.job_id = j.id)"
        ).fetchone()
        # Two runs of one job whose times overlap: it ran concurrently with itself.
        overlaps = conn.execute(
            "SELECT count(*) FROM ledger a JOIN ledger b ON a.job_id = b.job_id "
            "AND a.ctid < b.ctid AND a.started < b.finished AND b.started < a.finished"
        ).fetchone()
        figures.reruns = conn.execute(
            "SELECT count(*) - count(DISTINCT job_id) FROM ledger"
        ).fetchone()[0]
        # A transactional job's ledger row commits with its success: exactly one each.
        figures.tx_jobs, figures.tx_not_once = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE (SELECT count(*) FROM ledger l "
            "WHERE l.job_id = j.id) <> 1) FROM pgqueue.jobs j WHERE j.task = 'fault.tx'"
        ).fetchone()
        figures.rescues = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs, jsonb_array_elements(errors) e "
            "WHERE e->>'type' = 'pgqueue.WorkerLost'"
        ).fetchone()[0]
        # The job counters (kept by triggers in the jobs' own transactions) came through
        # the same crashes, kills and outages exact.
        assert_counters_match_rows(conn)
    figures.overlaps = overlaps[0] if overlaps else -1
    if maybe_more == 0:
        assert states == {"succeeded": figures.jobs}, states
    else:
        assert set(states) == {"succeeded"}, states
        assert figures.jobs <= states["succeeded"] <= figures.jobs + maybe_more, states
    assert missing == (0,)
    assert figures.overlaps == 0
    assert figures.tx_not_once == 0


def stop_all(workers: list[WorkerProcess]) -> None:
    """SIGTERM each live worker and require a clean exit (``stop`` waits for a worker
    respawned a moment ago to install its handler first)."""
    for w in workers:
        if w.proc.poll() is None:
            assert w.stop() == 0, w.log_path.read_text()[-4000:]


def registered_id(dsn: str, pid: int) -> str | None:
    """The id under which the worker process ``pid`` is registered, if it is."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT id::text FROM pgqueue.workers WHERE pid = %s", (pid,)).fetchone()
    return None if row is None else str(row[0])


def held(dsn: str, worker_id: str) -> int:
    """How many jobs are running under ``worker_id``."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE state = 'running' AND worker_id = %s",
            (worker_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def run(
    dsn: str,
    figures: Figures,
    chaos: Callable[[list[WorkerProcess]], None],
    timeout: float = 150.0 * SOAK,
    *,
    extra: tuple[str, ...] = (),
) -> None:
    workers = [spawn(dsn, *extra) for _ in range(WORKERS)]
    began = time.monotonic()
    try:
        while unfinished(dsn):
            if time.monotonic() - began > timeout:
                pytest.fail(
                    f"unfinished after {timeout} s: {diagnose(dsn)}\n{stuck_logs(dsn, workers)}"
                )
            chaos(workers)
        figures.seconds = time.monotonic() - began
        stop_all(workers)
    finally:
        for w in workers:
            w.close()


def in_thread(outcome: dict[str, object], name: str, fn: Callable[[], object]) -> threading.Thread:
    """Run ``fn`` in a thread of its own, started at once; its result, or the exception
    it raised, lands in ``outcome[name]``."""

    def target() -> None:
        try:
            outcome[name] = fn()
        except Exception as exc:  # the test looks at what was raised
            outcome[name] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def query_value(dsn: str, sql: str) -> int:
    """One number, asked on a fresh connection, retried for up to a minute while no
    server answers (it may just have restarted, or failed over)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                row = conn.execute(sql).fetchone()
                assert row is not None
                return int(row[0])
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


async def wait_until_async(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    """:func:`wait_until` for a test whose worker runs on its own event loop: it sleeps
    with ``asyncio.sleep``, so the loop (and the worker) goes on while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
