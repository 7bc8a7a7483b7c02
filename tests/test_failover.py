"""Failover: a primary and its streaming standby (tests/replication.py), a multi-host
DSN with ``target_session_attrs=read-write``, jobs flowing (producer threads enqueueing
sync and async, two worker processes of the ledger app running them); then the primary
stops at once and the standby is promoted. Nobody restarts the workers or the
producers: they reconnect to the new primary by themselves.

Both scenarios meet the same fault: the standby falls behind for LAG seconds just before
the primary dies (its walsender paused, as a slow link would). With synchronous
replication that holds the commits back, and nothing whose call returned is lost. With
asynchronous replication the last commits are gone: enqueues that returned, claims, and
outcomes. The test shows them, checks what still holds (no job runs twice at once,
every job the new primary has is processed) and prints the figures. What does not hold
there is shown too (an xfail): a job claimed in the lost commits whose run outlasts the
failover is queued again on the new primary and runs a second time beside the first;
the synchronous test runs the same long jobs and none does.

The workers run tests/apps/fault_app.py (``fault.work``: every run is a ledger row with
its start and end), four in the fault suite, two here.

Runs are recorded in a ledger on the session's own server (``make_empty_dsn``), away
from the pair, so that a run is never lost with the failover. Jobs are told apart by
their ``n`` argument, not their id: the new primary's sequence may hand out again the
ids of jobs it never saw.

The pair runs from the session server's major: the bundled binaries for the embedded
server (and a container), that major's installed ones for a $PGQUEUE_TEST_DSN server of
another major. Skipped when those, or their pg_basebackup, are missing.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
import pytest
from faultkit import query_value, spawn, stop_all, wait_until
from replication import FailoverTimes, ReplicatedPair, standby_bin_dir

import pgqueue
from pgqueue import migrate
from pgqueue.connect import asyncpg_connect

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import PgServer
    from workerproc import WorkerProcess

DATABASE = "failover_test"
INITIAL_JOBS = 1_500
WORKERS = 2
# Longer than the failover: no worker is declared dead by it, the jobs are not rescued
# by lease but reconnected to.
LEASE = "5"
# How long the standby falls behind before the primary dies.
LAG = 0.3
PRODUCERS = 2
# Jobs that outlast the failover (see run_failover's long_jobs).
LONG_JOBS = 20
LONG_PAUSE = 2.0
LONG_BASE = 5_000_000
UNFINISHED = "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running')"
SUCCEEDED = "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'"
WORKER_EVENTS = (
    "listener_lost",
    "heartbeat_failed",
    "claim_failed",
    "completion_write_failed",
    "unknown_jobs_released",
    "worker_declared_dead",
    "worker_fenced",
    "failover_detected",
    "claims_held",
    "lost_claims_given_up",
)


@pytest.fixture
def bin_dir(pg_server: PgServer) -> Path:
    """The session server's major's binaries, with pg_basebackup."""
    return standby_bin_dir(pg_server.kind, pg_server.server_version_num)


@pytest.fixture
def pair_factory(bin_dir: Path) -> Iterator[Callable[..., ReplicatedPair]]:
    """Makes primary-standby pairs (migrated, through the multi-host DSN), closed at
    the end."""
    made: list[ReplicatedPair] = []

    def make(*, synchronous: bool) -> ReplicatedPair:
        pair = ReplicatedPair(bin_dir, synchronous=synchronous, database=DATABASE)
        made.append(pair)
        migrate.upgrade(pair.dsn())
        return pair

    try:
        yield make
    finally:
        for pair in made:
            pair.close()


@pytest.fixture
def ledger_dsn(make_empty_dsn: Callable[[], str]) -> str:
    """Where the ledger app records every run: not on the pair, so no run is lost."""
    dsn = make_empty_dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ledger (id bigserial PRIMARY KEY, n bigint, job_id bigint, "
            "attempt int, pid int, started timestamptz, finished timestamptz, "
            "tx boolean NOT NULL DEFAULT false, given_up boolean NOT NULL DEFAULT false)"
        )
    return dsn


# --- helpers ----------------------------------------------------------------------------


def all_up(dsn: str) -> bool:
    beating = query_value(
        dsn,
        "SELECT count(*) FROM pgqueue.workers WHERE last_heartbeat > now() - interval '2 s'",
    )
    listening = query_value(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle' AND query LIKE 'LISTEN%'",
    )
    return beating == WORKERS and listening == WORKERS


class Producer(threading.Thread):
    """Enqueues on a Queue of its own all through the run, sync and async, one job and
    in bulk, with and without idempotency keys; never restarted. Records when each job
    whose call returned was enqueued (by its ``n``), and the jobs of calls whose outcome
    was unknown (OutcomeUnknownError: they may or may not exist)."""

    def __init__(self, dsn: str, number: int) -> None:
        super().__init__(name=f"producer-{number}", daemon=True)
        self.queue = pgqueue.Queue(dsn, pool_size=2, pool_timeout=60)
        self.base = (number + 1) * 10_000_000
        self.returned: dict[int, float] = {}  # n -> time.time() its call returned
        self.ids: dict[int, int] = {}  # n -> the id its enqueue returned
        self.unknown: set[int] = set()
        self.calls = 0
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(90)
        assert not self.is_alive(), f"{self.name} did not stop"

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            call = 0
            while not self._halt.wait(0.01):
                call += 1
                ns = [self.base + call * 10 + i for i in range(1 if call % 4 < 2 else 3)]
                try:
                    ids = self._call(loop, call, ns)
                except pgqueue.OutcomeUnknownError:
                    self.unknown.update(ns)
                    continue
                except Exception as exc:
                    self.errors.append(exc)
                    continue
                now = time.time()
                self.returned.update(dict.fromkeys(ns, now))
                self.ids.update(zip(ns, ids, strict=True))
                self.calls += 1
        finally:
            loop.run_until_complete(self.queue.close())
            loop.close()

    def _call(self, loop: asyncio.AbstractEventLoop, call: int, ns: list[int]) -> list[int]:
        q = self.queue
        keyed = call % 2 == 1
        specs = [
            q.build(
                "fault.work",
                {"n": n, "pause": 0.02},
                queue="faults",
                max_attempts=20,
                **({"idempotency_key": f"failover-{n}"} if keyed else {}),
            )
            for n in ns
        ]
        match call % 4:
            case 0:
                results = [q.enqueue_spec_sync(specs[0])]
            case 1:
                results = [loop.run_until_complete(q.enqueue_spec(specs[0]))]
            case 2:
                results = q.enqueue_many_sync(specs)
            case _:
                results = loop.run_until_complete(q.enqueue_many(specs))
        return [r.id for r in results]


def count_events(worker: WorkerProcess, event: str) -> int:
    return sum(1 for e in worker.events() if e.get("event") == event)


def released_jobs(worker: WorkerProcess) -> int:
    return sum(
        len(e.get("job_ids", []))
        for e in worker.events()
        if e.get("event") == "unknown_jobs_released"
    )


@dataclass
class Outcome:
    """What a failover scenario saw, all jobs named by their ``n``."""

    initial: set[int] = field(default_factory=set)
    returned: dict[int, float] = field(default_factory=dict)
    unknown: set[int] = field(default_factory=set)
    states: dict[int, str] = field(default_factory=dict)  # on the new primary, at the end
    runs: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # the ledger
    overlaps: int = 0
    # Jobs the new primary had running or queued just after the promotion although a
    # run of theirs had finished before the primary died: their outcome was not yet
    # written (it will be, on the new primary) or was written and lost with the primary.
    outcome_lost: dict[int, str] = field(default_factory=dict)  # n -> its state then
    times: FailoverTimes = field(default_factory=FailoverTimes)
    recovery: float = 0.0  # seconds from the promotion to every job finished
    calls: int = 0  # the producers' calls that returned
    events: dict[str, int] = field(default_factory=dict)  # in the workers' logs
    released: int = 0  # jobs the workers handed back (unknown_jobs_released)
    stall: float = 0.0  # the longest time without a completion, seconds
    foreign_results: int = 0  # succeeded jobs holding another job's result
    ids: dict[int, int] = field(default_factory=dict)  # n -> id its enqueue returned
    given_up: int = 0  # runs the worker gave up (fault.long's, recorded from the start)
    id_of: dict[int, int] = field(default_factory=dict)  # n -> id on the new primary

    @property
    def stopped_at(self) -> float:
        return self.times.stopped_at

    @property
    def lost_enqueues(self) -> set[int]:
        return set(self.returned) - set(self.states)

    @property
    def reused_ids(self) -> int:
        """Ids of lost jobs that the new primary gave to other jobs."""
        taken = set(self.id_of.values())
        return sum(1 for n in self.lost_enqueues if self.ids[n] in taken)

    @property
    def long_run_twice(self) -> int:
        long = range(LONG_BASE, LONG_BASE + LONG_JOBS)
        return sum(1 for n, runs in self.runs.items() if n in long and len(runs) > 1)

    @property
    def reruns(self) -> int:
        return sum(len(r) - 1 for r in self.runs.values() if r)


def snapshot_unfinished(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        return {
            int(n): str(state)
            for n, state in conn.execute(
                "SELECT (args->>'n')::bigint, state::text FROM pgqueue.jobs "
                "WHERE state IN ('queued', 'running')"
            )
        }


def run_failover(
    pair: ReplicatedPair, ledger_dsn: str, worker_dsn: str, *, long_jobs: int = 0
) -> Outcome:
    """Jobs flowing, the failover, everything finished; what was seen.

    ``long_jobs``: that many jobs of LONG_PAUSE seconds, enqueued (and replicated)
    before the fault but due, first in line, in the middle of the lag: their claims are
    among the last commits, and their runs outlast the failover."""
    dsn = pair.dsn()
    out = Outcome()
    queue = pgqueue.Queue(dsn)
    specs = [
        queue.build("fault.work", {"n": n, "pause": 0.02}, queue="faults", max_attempts=20)
        for n in range(INITIAL_JOBS)
    ]
    queue.enqueue_many_sync(specs)
    queue.close_sync()
    out.initial = set(range(INITIAL_JOBS))
    workers = [spawn(worker_dsn, "--lease", LEASE, ledger_dsn=ledger_dsn) for _ in range(WORKERS)]
    producers = [Producer(dsn, i) for i in range(PRODUCERS)]
    try:
        for p in producers:
            p.start()
        wait_until("some work done", lambda: query_value(dsn, SUCCEEDED) >= 300)
        wait_until("every worker beating and listening", lambda: all_up(dsn))
        calls_before = sum(p.calls for p in producers)
        if long_jobs:
            due = enqueue_long_jobs(dsn, long_jobs)
            out.initial |= due[1]
            # Fault injection timing, not a wait for a result: the lag begins half a
            # lag before the long jobs are due.
            time.sleep(max(0.0, due[0] - LAG / 2 - time.time()))
        out.times = pair.fail_over(lag=LAG)
        promoted_at = time.time()
        runs_before_stop = ledger_finished_before(ledger_dsn, out.stopped_at)
        out.outcome_lost = {
            n: state for n, state in snapshot_unfinished(dsn).items() if n in runs_before_stop
        }
        done_after = query_value(dsn, SUCCEEDED)
        wait_until(
            "workers and producers working on the new primary",
            lambda: (
                query_value(dsn, SUCCEEDED) >= done_after + 200
                and sum(p.calls for p in producers) >= calls_before + 20
            ),
        )
        for p in producers:
            p.stop()
        errors = [e for p in producers for e in p.errors]
        assert not errors, errors[:5]
        # Up to RECONCILE_SECONDS (30 s) for a job whose outcome was lost under a live
        # worker: the worker's periodic check hands it back.
        wait_until("every job finished", lambda: query_value(dsn, UNFINISHED) == 0, 60)
        out.recovery = time.time() - promoted_at
        # Nobody restarted the workers.
        assert all(w.proc.poll() is None for w in workers), [w.proc.returncode for w in workers]
        out.events = {n: sum(count_events(w, n) for w in workers) for n in WORKER_EVENTS}
        out.released = sum(released_jobs(w) for w in workers)
        stop_all(workers)
    finally:
        for p in producers:
            if p.is_alive():
                p.stop()
        for w in workers:
            w.close()
    for p in producers:
        out.returned.update(p.returned)
        out.unknown |= p.unknown
        out.ids.update(p.ids)
        out.calls += p.calls
    read_outcome(out, dsn, ledger_dsn)
    return out


def read_outcome(out: Outcome, dsn: str, ledger_dsn: str) -> None:
    """The jobs on the new primary, and the runs in the ledger."""
    with psycopg.connect(dsn) as conn:
        for n, job_id, state in conn.execute(
            "SELECT (args->>'n')::bigint, id, state::text FROM pgqueue.jobs"
        ):
            out.states[int(n)] = str(state)
            out.id_of[int(n)] = int(job_id)
        # The longest time without a completion, around the failover.
        out.stall = conn.execute(
            "SELECT extract(epoch FROM max(gap))::float8 FROM (SELECT finished_at - "
            "lag(finished_at) OVER (ORDER BY finished_at) AS gap FROM pgqueue.jobs "
            "WHERE finished_at BETWEEN to_timestamp(%s) - interval '3 s' "
            "AND to_timestamp(%s) + interval '30 s') AS g",
            (out.stopped_at, out.stopped_at),
        ).fetchone()[0]
        # fault.work returns its n: another result is another job's outcome, written
        # over this one (a job id the new primary handed out again).
        out.foreign_results = conn.execute(
            "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded' "
            "AND result::text::bigint <> (args->>'n')::bigint"
        ).fetchone()[0]
    with psycopg.connect(ledger_dsn) as conn:
        for n, started, finished, given_up in conn.execute(
            "SELECT n, extract(epoch FROM started), extract(epoch FROM finished), given_up "
            "FROM ledger"
        ):
            # A run never finished (its worker killed) lasts for good.
            end = math.inf if finished is None else float(finished)
            out.runs.setdefault(int(n), []).append((float(started), end))
            out.given_up += given_up
        out.overlaps = conn.execute(
            "SELECT count(*) FROM ledger a JOIN ledger b ON a.n = b.n AND a.id < b.id "
            "AND a.started < COALESCE(b.finished, 'infinity') "
            "AND b.started < COALESCE(a.finished, 'infinity')"
        ).fetchone()[0]


def describe(out: Outcome) -> list[str]:
    """The figures, for the test's output."""
    returns = sorted(t for t in out.returned.values() if t > out.stopped_at - 3)
    enqueue_stall = max((b - a for a, b in itertools.pairwise(returns)), default=0.0)
    lost_states = ", ".join(
        f"{sum(1 for s in out.outcome_lost.values() if s == state)} {state}"
        for state in ("queued", "running")
    )
    counts = (
        f"{len(out.states)} jobs on the new primary, {len(out.returned)} enqueued by calls "
        f"that returned ({out.calls} calls), {len(out.unknown)} by "
        f"calls whose outcome was unknown; {out.recovery:.1f} s from the "
        "promotion to every job finished"
    )
    timing = (
        f"failover: standby behind for {LAG} s, primary stopped in {out.times.stop:.2f} s, "
        f"standby promoted in {out.times.promote:.2f} s; the queue stalled {out.stall:.2f} s "
        f"(the longest time without a completion), enqueues {enqueue_stall:.2f} s"
    )
    losses = (
        f"lost: {len(out.lost_enqueues)} enqueues that had returned; "
        f"{len(out.outcome_lost)} jobs whose run had finished before the stop were "
        f"unfinished on the new primary (outcome in flight or lost: {lost_states}); "
        f"{out.reruns} extra runs (at-least-once), {out.released} jobs handed back by their "
        f"worker; concurrent runs of one job: {out.overlaps}; succeeded jobs holding "
        f"another job's result: {out.foreign_results}; ids of lost jobs given to other "
        f"jobs: {out.reused_ids}; long jobs run more than once: {out.long_run_twice}; "
        f"runs given up by their worker (their claim lost): {out.given_up}"
    )
    log = "worker log: " + ", ".join(f"{name} {count}" for name, count in out.events.items())
    return [counts, timing, losses, log]


def enqueue_long_jobs(dsn: str, count: int) -> tuple[float, set[int]]:
    """``count`` long jobs due in a second, ahead of the others; when, and their ns."""
    queue = pgqueue.Queue(dsn)
    ns = set(range(LONG_BASE, LONG_BASE + count))
    try:
        specs = [
            queue.build(
                "fault.long",
                {"n": n, "pause": LONG_PAUSE},
                queue="faults",
                max_attempts=20,
                priority=10,
                delay=1.0,
            )
            for n in sorted(ns)
        ]
        queue.enqueue_many_sync(specs)
        due = time.time() + 1.0
        with psycopg.connect(dsn) as conn:
            # Replicated before the lag begins.
            conn.execute("SELECT pg_current_wal_flush_lsn()")
    finally:
        queue.close_sync()
    return due, ns


def ledger_finished_before(ledger_dsn: str, at: float) -> set[int]:
    with psycopg.connect(ledger_dsn) as conn:
        return {
            int(r[0])
            for r in conn.execute("SELECT n FROM ledger WHERE finished < to_timestamp(%s)", (at,))
        }


def check_common(out: Outcome) -> None:
    """What holds whatever the replication: no job ran twice at once, every job the
    new primary has was processed (and its run recorded), and it has no job nobody
    asked for."""
    assert out.overlaps == 0
    unfinished = {n: s for n, s in out.states.items() if s != "succeeded"}
    assert not unfinished, list(unfinished.items())[:10]
    unrecorded = [n for n in out.states if not out.runs.get(n)]
    assert not unrecorded, unrecorded[:10]
    asked = out.initial | set(out.returned) | out.unknown
    assert set(out.states) <= asked, sorted(set(out.states) - asked)[:10]


# --- the tests --------------------------------------------------------------------------


def test_multi_host_dsns_reach_the_primary_with_both_drivers(pair_factory):
    """The URL form and libpq's key=value form, with target_session_attrs=read-write:
    psycopg, asyncpg (through pgqueue.connect) and a Queue reach the primary, and the
    standby once promoted; the Queue rides out the failover on its own."""
    pair = pair_factory(synchronous=False)
    loop = asyncio.new_event_loop()

    async def asyncpg_port(dsn: str) -> int:
        conn = await asyncpg_connect(dsn)
        try:
            return int(await conn.fetchval("SELECT current_setting('port')"))
        finally:
            await conn.close()

    def reached(dsn: str) -> set[int]:
        with psycopg.connect(dsn) as conn:
            by_psycopg = int(conn.info.port)
        return {by_psycopg, loop.run_until_complete(asyncpg_port(dsn))}

    forms = (pair.dsn(), pair.conninfo())
    queues = [pgqueue.Queue(dsn, pool_timeout=30) for dsn in forms]
    try:
        for dsn, queue in zip(forms, queues, strict=True):
            assert reached(dsn) == {pair.primary.port}, dsn
            queue.enqueue_sync("t", {"form": dsn, "before": True})
            loop.run_until_complete(queue.enqueue("t", {"form": dsn, "before": True}))
        # Replication is asynchronous: the last commits may not have reached the standby
        # when the primary stops (test_failover_asynchronous is about that loss). Here the
        # count at the end is about the Queue riding out the failover: wait for them.
        pair.wait_received()
        pair.fail_over()
        for dsn, queue in zip(forms, queues, strict=True):
            assert reached(dsn) == {pair.standby.port}, dsn
            queue.enqueue_sync("t", {"form": dsn, "before": False})
            loop.run_until_complete(queue.enqueue("t", {"form": dsn, "before": False}))
    finally:
        for queue in queues:
            loop.run_until_complete(queue.close())
        loop.close()
    assert query_value(pair.standby_dsn(), "SELECT count(*) FROM pgqueue.jobs") == 8


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers: to a client, the
    old primary's machine gone after a failover."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # never accept()ed
        yield int(sock.getsockname()[1])


def test_a_first_host_that_never_answers_costs_one_connect_timeout(pair_factory, silent_port):
    """libpq gives each host of a multi-host DSN the connect timeout; asyncpg's covers
    them all, so a first host that never answers used it up and the primary behind it
    was never tried. pgqueue tries the hosts in turn: both drivers reach the primary
    after one timeout, and so does a Queue's async call."""
    pair = pair_factory(synchronous=False)
    dsn = (
        f"postgresql://postgres@127.0.0.1:{silent_port},127.0.0.1:{pair.primary.port}/"
        f"{DATABASE}?target_session_attrs=read-write&connect_timeout=2"
    )

    async def through_asyncpg() -> int:
        conn = await asyncpg_connect(dsn)
        try:
            return int(await conn.fetchval("SELECT current_setting('port')"))
        finally:
            await conn.close()

    async def enqueue() -> pgqueue.EnqueueResult:
        queue = pgqueue.Queue(dsn, pool_timeout=30)
        try:
            return await queue.enqueue("t", {"past": "a silent host"})
        finally:
            await queue.close()

    began = time.monotonic()
    with psycopg.connect(dsn) as conn:
        assert conn.info.port == pair.primary.port
    assert asyncio.run(through_asyncpg()) == pair.primary.port
    assert asyncio.run(enqueue()).id >= 1
    # Three connections, each after one timeout of 2 s on the silent host.
    assert time.monotonic() - began < 20


@pytest.mark.slow
def test_failover_synchronous(pair_factory, ledger_dsn, capsys):
    """Synchronous replication: every job whose enqueue returned before the failover is
    on the new primary and processed, none ran twice at once."""
    pair = pair_factory(synchronous=True)
    # The workers get libpq's key=value form, the producers the URL form.
    out = run_failover(pair, ledger_dsn, pair.conninfo(), long_jobs=LONG_JOBS)
    with capsys.disabled():
        print("\nfailover, synchronous replication:\n  " + "\n  ".join(describe(out)))
    check_common(out)
    assert not out.lost_enqueues, sorted(out.lost_enqueues)[:10]
    # No outcome the workers wrote was lost: nothing ran again.
    assert out.reruns == 0, "\n".join(describe(out))
    assert out.foreign_results == 0


@pytest.mark.slow
def test_failover_asynchronous(pair_factory, ledger_dsn, capsys):
    """Asynchronous replication: the commits of the last LAG seconds are lost with the
    primary. Enqueues that returned may be gone; outcomes written may be gone, and those
    jobs run again (at-least-once). Still, nothing runs twice at once, and every job the
    new primary has is processed; and nothing older than the lag is lost."""
    pair = pair_factory(synchronous=False)
    out = run_failover(pair, ledger_dsn, pair.dsn())
    with capsys.disabled():
        print("\nfailover, asynchronous replication:\n  " + "\n  ".join(describe(out)))
    check_common(out)
    # What is lost was committed while the standby was behind (a margin of a second for
    # the WAL on its way when the lag began).
    cutoff = out.stopped_at - LAG - 1.0
    old_lost = [n for n in out.lost_enqueues if out.returned[n] < cutoff]
    assert not old_lost, old_lost[:10]
    # The fault did lose commits: this shows what asynchronous replication risks.
    assert out.lost_enqueues or out.outcome_lost, "\n".join(describe(out))


@pytest.mark.slow
def test_failover_asynchronous_a_long_job_whose_claim_was_lost_never_runs_twice_at_once(
    pair_factory, ledger_dsn, capsys
):
    """LONG_JOBS jobs that outlast the failover, claimed while the standby is behind:
    the new primary has them queued while their first runs go on. Every worker sees the
    new timeline before its first claim there and holds its claims for a lease; each
    checks its running jobs against the new primary and gives up those whose claim was
    lost (their ledger rows end when they stopped). Only then do they run again: no
    two runs of one job overlap, and every job finishes."""
    pair = pair_factory(synchronous=False)
    out = run_failover(pair, ledger_dsn, pair.dsn(), long_jobs=LONG_JOBS)
    with capsys.disabled():
        print("\nfailover, asynchronous, jobs outlasting it:\n  " + "\n  ".join(describe(out)))
    check_common(out)
    # The scenario did lose claims, and the workers found them.
    assert out.events["failover_detected"] >= WORKERS, out.events
    assert out.events["lost_claims_given_up"] >= 1, "\n".join(describe(out))
    assert out.given_up >= 1, "\n".join(describe(out))
    long = range(LONG_BASE, LONG_BASE + LONG_JOBS)
    for n in long:
        runs = sorted(out.runs[n])
        # Ran to the end once, after any run given up had stopped.
        assert sum(1 for _, end in runs if end != math.inf) == len(runs), runs
    # The held claims show in the stall: at least most of a lease without completions.
    assert out.stall >= float(LEASE) * 0.5, out.stall
