"""Fault injection: workers killed at random, connections terminated at random, workers
stopped in the middle of long jobs, workers frozen past their lease. Each scenario ends
with the same invariants (faultkit.check_invariants): every committed job reached a
terminal state, no job ran concurrently with itself, no succeeded job lacks its ledger
row, and a transactional job's row exists exactly once. Each prints what it saw.
(PostgreSQL restarts: test_db_restart.py.)"""

from __future__ import annotations

import random
import signal
import time
from typing import TYPE_CHECKING

import psycopg
import pytest
from faultkit import (
    SOAK,
    Figures,
    check_invariants,
    held,
    prepare,
    registered_id,
    run,
    spawn,
)

if TYPE_CHECKING:
    from workerproc import WorkerProcess


@pytest.mark.slow
def test_workers_killed_at_random_lose_nothing(dsn, capsys):
    figures = Figures(jobs=20_000 * SOAK)
    prepare(dsn, figures.jobs)
    rng = random.Random(20261122)
    last_kill = [time.monotonic()]

    def kill_one(workers: list[WorkerProcess]) -> None:
        time.sleep(0.2)
        if time.monotonic() - last_kill[0] < 1.0:
            return
        last_kill[0] = time.monotonic()
        victim = rng.randrange(len(workers))
        workers[victim].signal(signal.SIGKILL)
        workers[victim].wait(10)
        workers[victim].close()
        workers[victim] = spawn(dsn)
        figures.kills += 1

    run(dsn, figures, kill_one)
    check_invariants(dsn, figures)
    with capsys.disabled():
        print("\n" + figures.report("workers SIGKILLed at random"))
    assert figures.kills >= 1


@pytest.mark.slow
def test_backends_terminated_at_random_lose_nothing(dsn, capsys):
    figures = Figures(jobs=5_000 * SOAK)
    prepare(dsn, figures.jobs)
    rng = random.Random(7)

    def terminate_some(_workers: list[WorkerProcess]) -> None:
        time.sleep(0.3)
        with psycopg.connect(dsn, autocommit=True) as conn:
            pids = [
                r[0]
                for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ]
            for pid in rng.sample(pids, k=min(len(pids), 3)):
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                figures.terminated_backends += 1

    run(dsn, figures, terminate_some)
    check_invariants(dsn, figures)
    with capsys.disabled():
        print("\n" + figures.report("backends terminated at random"))
    assert figures.terminated_backends >= 1


GRACE = 0.5


@pytest.mark.slow
def test_workers_stopped_during_long_jobs_hand_them_back(dsn, capsys):
    """SIGTERM a worker while it runs jobs of up to 2 s with a 0.5 s grace period: it
    exits cleanly, and none of its jobs is left running under it."""
    figures = Figures(jobs=400 * SOAK)
    prepare(dsn, figures.jobs, pause=(0.2, 2.0))
    rng = random.Random(4)
    last_stop = [time.monotonic()]
    longest = [0.0]

    def stop_one(workers: list[WorkerProcess]) -> None:
        time.sleep(0.2)
        if time.monotonic() - last_stop[0] < 1.0:
            return
        index = rng.randrange(len(workers))
        victim = workers[index]
        worker_id = registered_id(dsn, victim.pid)
        if worker_id is None or not held(dsn, worker_id):
            return  # only a worker in the middle of jobs makes the point
        victim.wait_until_handling(signal.SIGTERM, timeout=30)
        began = time.monotonic()
        assert victim.stop(timeout=GRACE + 30) == 0, victim.log_path.read_text()[-4000:]
        longest[0] = max(longest[0], time.monotonic() - began)
        assert held(dsn, worker_id) == 0  # handed back before it exited
        last_stop[0] = time.monotonic()
        victim.close()
        workers[index] = spawn(dsn, "--grace-period", str(GRACE))
        figures.stops += 1

    run(dsn, figures, stop_one, extra=("--grace-period", str(GRACE)))
    check_invariants(dsn, figures)
    figures.notes.append(f"longest stop {longest[0]:.2f} s with a {GRACE} s grace period")
    with capsys.disabled():
        print("\n" + figures.report("workers SIGTERMed during long jobs"))
    assert figures.stops >= 1


@pytest.mark.slow
def test_workers_frozen_past_the_lease_never_write_over_the_new_owner(dsn, capsys):
    """SIGSTOP a worker holding transactional jobs until others have rescued them, then
    SIGCONT it: its runs wake and try to commit, and the completing UPDATE, guarded by
    attempt and worker, refuses them, so each job's effect exists exactly once."""
    figures = Figures(jobs=1200 * SOAK)
    prepare(dsn, figures.jobs, tx_every=1, pause=(0.05, 0.6))
    rng = random.Random(5)
    last_freeze = [time.monotonic()]

    def freeze_one(workers: list[WorkerProcess]) -> None:
        time.sleep(0.2)
        if time.monotonic() - last_freeze[0] < 2.0:
            return
        victim = workers[rng.randrange(len(workers))]
        worker_id = registered_id(dsn, victim.pid)
        if worker_id is None or not held(dsn, worker_id):
            return
        victim.signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30
            # Past the lease: another worker drops its entry and hands its jobs back.
            while registered_id(dsn, victim.pid) is not None or held(dsn, worker_id):
                assert time.monotonic() < deadline, "a frozen worker's jobs were not rescued"
                time.sleep(0.05)
        finally:
            victim.signal(signal.SIGCONT)
        last_freeze[0] = time.monotonic()
        figures.freezes += 1

    run(dsn, figures, freeze_one)
    check_invariants(dsn, figures)
    with capsys.disabled():
        print("\n" + figures.report("workers frozen past the lease"))
    assert figures.freezes >= 1
    assert figures.rescues >= 1
