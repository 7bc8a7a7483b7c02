"""Workers on several hosts: network namespaces stand in for the hosts (tests/netns.py),
each linked to the database's namespace by a veth pair of its own, and a PostgreSQL of
the test's own runs in the database's namespace. Three worker hosts share one queue of
fault_app's jobs (each run writes a ledger row timed by the database's clock).

- One host's link is cut in the middle of its jobs for longer than the lease, then
  restored: its jobs are rescued a lease after its last heartbeat (not before, by the
  database's clock), nothing is lost, no job's effect exists twice or overlaps another
  run's, the cut-off worker's late commits are refused, and it rejoins under a new id
  and runs jobs again.
- Self-fencing: plain (not transactional) async and process tasks, whose runs a
  cut-off worker cannot withhold, each run recording on this machine when it started
  and how long it went on: across a cut past the lease, no job runs twice at once,
  since the cut-off worker gives its jobs up before the lease runs out.
- Clock skew: workers whose wall clocks are an hour ahead and an hour behind (libfaketime,
  that process alone) keep their leases, rescue by the database's clock, run delayed jobs
  when the database says they are due and give a periodic schedule the ticks the
  database's clock says.

In the first test every job is transactional (its ledger row commits with its success):
a cut-off worker's late commits are refused. Plain tasks' effects cannot be withheld;
they are kept apart by the worker fencing itself (README, Several hosts). Needs root and
``ip netns`` (and libfaketime for the skew), else skipped with the reason;
PGQUEUE_TEST_HOSTS=require makes that a failure.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from faultkit import Figures, check_invariants, diagnose, prepare, registered_id, stop_all
from netns import Hosts, NamespacedCluster, unavailable
from pgcluster import ClusterError, find_bin_dir, installed_majors
from workerproc import WorkerProcess

import pgqueue
from pgqueue import migrate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DATABASE = "hosts_test"
LEASE = 2.0
CONCURRENCY = "8"
# Where Debian's libfaketime puts its preload library (multi-threaded flavour), under
# /usr/lib.
FAKETIME_GLOB = "*/faketime/libfaketimeMT.so.1"
HOUR = 3600
REQUIRE_ENV = "PGQUEUE_TEST_HOSTS"  # "require": what a skip would be fails the test


def skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "require":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=require)")
    pytest.skip(reason)


class Site:
    """The hosts, the database in its namespace, and the DSNs to reach it."""

    def __init__(self, hosts: Hosts, cluster: NamespacedCluster) -> None:
        self.hosts = hosts
        self.cluster = cluster
        self.dsn = cluster.dsn(DATABASE)  # the test's own: the unix socket

    def host_dsn(self, k: int) -> str:
        return self.cluster.tcp_dsn(self.hosts.db_address(k), DATABASE)

    def spawn(
        self, k: int, *, env: dict[str, str] | None = None, app: str = "fault_app:queue"
    ) -> WorkerProcess:
        """A worker on host ``k``, reaching the database (and its ledger) over its link."""
        dsn = self.host_dsn(k)
        return WorkerProcess(
            app, dsn,
            "--concurrency", CONCURRENCY, "--lease", str(LEASE), "--poll-interval", "0.5",
            "--log-level", "info",
            env={"LEDGER_DSN": dsn, **(env or {})},
            prefix=self.hosts.prefix(k),
        )  # fmt: skip


def _bin_dir() -> Path | None:
    for major in installed_majors():
        found = find_bin_dir(major)
        if found is not None:
            return found
    try:
        from pgqueue.embedded import bundled_bin_dir

        return bundled_bin_dir()
    except Exception:  # no embedded extra: no binaries at all
        return None


@pytest.fixture
def site() -> Iterator[Site]:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    bin_dir = _bin_dir()
    if bin_dir is None:
        skip_or_fail("no PostgreSQL server binaries to run in the database's namespace")
    with Hosts(3) as hosts:
        try:
            cluster = NamespacedCluster(
                bin_dir, netns=hosts.db, listen=hosts.listen_addresses(), prefix="pgqueue-hosts-"
            )
        except ClusterError as exc:
            pytest.fail(f"initdb in the database's namespace failed: {exc}")
        try:
            cluster.start()
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
            migrate.upgrade(cluster.dsn(DATABASE))
            yield Site(hosts, cluster)
        finally:
            cluster.close()


# --- reading the database -------------------------------------------------------------


def one(dsn: str, sql: str, *params: object) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def wait_for(what: str, check: Callable[[], Any], timeout: float, dsn: str) -> Any:
    """Poll ``check`` until it gives something true (returned), for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}; {diagnose(dsn)}")


def holding(dsn: str, pid: int, at_least: int) -> str | None:
    """The id of worker process ``pid`` once it holds ``at_least`` running jobs."""
    worker_id = registered_id(dsn, pid)
    if worker_id is None:
        return None
    count = one(
        dsn,
        "SELECT count(*) FROM pgqueue.jobs WHERE state = 'running' AND worker_id = %s",
        worker_id,
    )
    return worker_id if count >= at_least else None


def enqueue(dsn: str, numbers: range, *, pause: tuple[float, float], delay: float = 0) -> None:
    rng = random.Random(numbers.start)
    queue = pgqueue.Queue(dsn)
    specs = [
        queue.build(
            "fault.tx",
            {"n": n, "pause": round(rng.uniform(*pause), 3)},
            queue="faults",
            max_attempts=20,
            delay=delay or None,
        )
        for n in numbers
    ]
    queue.enqueue_many_sync(specs)
    queue.close_sync()


def all_done(dsn: str) -> bool:
    return not one(dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running')")


def cut_past_the_lease(
    site: Site, k: int, worker: WorkerProcess, figures: Figures, *, hold: float = 0.0
) -> str:
    """Cut host ``k`` while its worker holds jobs, until another worker has rescued them
    and taken them up (and ``hold`` seconds more: the cut's length, not a wait);
    check the rescue came a lease after the host's last heartbeat (by the database's
    clock), not sooner and not much later. The cut-off worker's id."""
    dsn = site.dsn
    old_id = wait_for(
        f"host {k}'s worker running jobs", lambda: holding(dsn, worker.pid, 2), 30, dsn
    )
    site.hosts.cut(k)
    began = time.monotonic()
    try:
        # Its heartbeats stop with the link: the last one the database took is its
        # entry's last_heartbeat when the rescue drops the entry.
        last_beat: dt.datetime | None = None
        deadline = time.monotonic() + LEASE + 20
        while True:
            beat = one(dsn, "SELECT last_heartbeat FROM pgqueue.workers WHERE id = %s", old_id)
            if beat is None:
                break
            last_beat = beat
            assert time.monotonic() < deadline, f"host {k}'s jobs never rescued: {diagnose(dsn)}"
            time.sleep(0.05)
        assert last_beat is not None
        with psycopg.connect(dsn) as conn:
            rescues = conn.execute(
                "SELECT j.id, (e->>'at')::timestamptz - %s AS after_beat "
                "FROM pgqueue.jobs j, jsonb_array_elements(j.errors) e "
                "WHERE e->>'type' = 'pgqueue.WorkerLost' AND e->>'worker_id' = %s",
                (last_beat, old_id),
            ).fetchall()
        assert rescues, "the cut-off worker's entry went, but none of its jobs was rescued"
        lease = dt.timedelta(seconds=LEASE)
        for job_id, after_beat in rescues:
            # Not before the lease ran out, by the database's clock; and soon after (the
            # live workers try a rescue every fifth of a lease).
            assert lease <= after_beat < lease + dt.timedelta(seconds=4), (job_id, after_beat)
        rescued = [r[0] for r in rescues]
        # Keep the link down until the new owners have those jobs: the cut-off worker's
        # late commits then meet a job that has moved on.
        wait_for(
            "the rescued jobs taken up by the other hosts",
            lambda: one(
                dsn,
                "SELECT bool_and(state = 'succeeded' OR (state = 'running' AND worker_id <> %s))"
                " FROM pgqueue.jobs WHERE id = ANY(%s)",
                old_id,
                rescued,
            ),
            30,
            dsn,
        )
        time.sleep(hold)
    finally:
        site.hosts.restore(k)
    longest = max(r[1] for r in rescues).total_seconds()
    figures.notes.append(
        f"host h{k} cut for {time.monotonic() - began:.1f} s, {len(rescues)} of its jobs "
        f"rescued {longest:.2f} s after its last heartbeat (lease {LEASE:g} s)"
    )
    return str(old_id)


def rejoined(site: Site, worker: WorkerProcess, old_id: str, k: int) -> str:
    """Wait until the cut-off worker has learnt it was declared dead and registered
    again under a new id, from host ``k``; the new id."""
    worker.wait_for_event("worker_declared_dead", timeout=40)
    worker.wait_for_event("worker_rejoined", timeout=40)
    new_id = registered_id(site.dsn, worker.pid)
    assert new_id is not None
    assert new_id != old_id
    assert one(site.dsn, "SELECT host FROM pgqueue.workers WHERE id = %s", new_id) == f"h{k}"
    return new_id


def check_rescued_runs(dsn: str, old_id: str) -> None:
    """Each job rescued from ``old_id`` has its one ledger row from a later attempt:
    the cut-off worker's own run of it wrote nothing that stayed."""
    with psycopg.connect(dsn) as conn:
        stale = conn.execute(
            "SELECT j.id, l.attempt, (e->>'attempt')::int FROM pgqueue.jobs j "
            "CROSS JOIN LATERAL jsonb_array_elements(j.errors) e "
            "JOIN ledger l ON l.job_id = j.id "
            "WHERE e->>'type' = 'pgqueue.WorkerLost' AND e->>'worker_id' = %s "
            "AND l.attempt <= (e->>'attempt')::int",
            (old_id,),
        ).fetchall()
    assert stale == [], f"rows of the cut-off worker's runs (job, row attempt, lost): {stale}"


def ran_jobs(dsn: str, worker_id: str) -> int:
    return int(
        one(
            dsn,
            "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded' AND worker_id = %s",
            worker_id,
        )
    )


# --- the tests ------------------------------------------------------------------------


@pytest.mark.slow
def test_host_cut_off_past_the_lease_loses_nothing_and_rejoins(site, capsys):
    dsn = site.dsn
    first, later = 240, 48
    figures = Figures(jobs=first + later)
    prepare(dsn, first, tx_every=1, pause=(0.5, 1.0), seed=11)
    workers = [site.spawn(k) for k in (1, 2, 3)]
    began = time.monotonic()
    try:
        for k, worker in enumerate(workers, start=1):
            assert worker.wait_for_event("worker_started", timeout=30)
            assert one(dsn, "SELECT host FROM pgqueue.workers WHERE pid = %s", worker.pid) == (
                f"h{k}"
            )
        victim = workers[0]
        old_id = cut_past_the_lease(site, 1, victim, figures)
        new_id = rejoined(site, victim, old_id, 1)
        # Work for it once it is back.
        enqueue(dsn, range(first, first + later), pause=(0.5, 1.0))
        wait_for("every job finished", lambda: all_done(dsn), 60, dsn)
        assert ran_jobs(dsn, new_id) >= 1, "the rejoined worker ran no job"
        figures.seconds = time.monotonic() - began
        stop_all(workers)
    finally:
        for w in workers:
            w.close()
    check_invariants(dsn, figures)
    check_rescued_runs(dsn, old_id)
    with capsys.disabled():
        print("\n" + figures.report("a host cut off past the lease"))
    assert figures.rescues >= 1


def fenced_runs_apart(ledger: Path) -> list[tuple[int, float]]:
    """Each run's span (its first record to its last) from fence_app's ledger files,
    by job; asserts no two runs of a job overlap. The overlaps' absence is the point;
    returns, for the report, each job's runs as (job id, seconds run)."""
    runs: dict[int, list[tuple[float, float, str]]] = {}
    for path in ledger.iterdir():
        stamps = [float(t) for t in path.read_text().split()]
        if stamps:
            job_id = int(path.name.split("-")[0])
            runs.setdefault(job_id, []).append((stamps[0], stamps[-1], path.name))
    overlaps = []
    for spans in runs.values():
        spans.sort()
        ended, last = spans[0][1], spans[0][2]  # the run that ends latest so far
        for start, end, name in spans[1:]:
            if start < ended:
                overlaps.append(f"{last} and {name} overlap by {ended - start:.2f} s")
            if end > ended:
                ended, last = end, name
    assert overlaps == [], f"{len(overlaps)} jobs ran twice at once: {overlaps}"
    return [(j, end - start) for j, spans in runs.items() for start, end, _ in spans]


def holding_a_process_run(dsn: str, pid: int, ledger: Path) -> str | None:
    """The id of worker process ``pid`` once it holds a running job of each kind, and a
    process one has started (its pool's process is up)."""
    worker_id = holding(dsn, pid, 2)
    if worker_id is None:
        return None
    with psycopg.connect(dsn) as conn:
        held = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM pgqueue.jobs WHERE state = 'running' AND worker_id = %s "
                "AND task = 'fence.proc_nap'",
                (worker_id,),
            )
        }
    started = {int(p.name.split("-")[0]) for p in ledger.glob("*-process-*")}
    return worker_id if held & started else None


@pytest.mark.slow
def test_a_host_cut_off_past_the_lease_never_runs_a_job_beside_its_rescuer(site, tmp_path, capsys):
    """Plain async and process tasks, longer than the lease: the cut-off worker fences
    itself (a lease minus a fifth after its last beat was sent, before any rescue), so
    its runs end before the rescued jobs start elsewhere; it rejoins once back."""
    dsn = site.dsn
    ledger = tmp_path / "runs"
    ledger.mkdir()
    prepare(dsn, 0)
    rng = random.Random(3)
    queue = pgqueue.Queue(dsn)
    jobs = 16
    queue.enqueue_many_sync(
        [
            queue.build(
                "fence.proc_nap" if n % 4 == 0 else "fence.nap",
                {"pause": round(rng.uniform(LEASE * 4, LEASE * 5), 3)},
                queue="fence",
                max_attempts=20,
            )
            for n in range(jobs)
        ]
    )
    queue.close_sync()
    figures = Figures(jobs=jobs)
    env = {"FENCE_LEDGER": str(ledger)}
    # Host 1 first, to take its fill; the others then have room to take its jobs up as
    # soon as they are rescued, while its own runs would still be going.
    workers = [site.spawn(1, env=env, app="fence_app:queue")]
    try:
        victim = workers[0]
        wait_for(
            "host 1's worker running a process job",
            lambda: holding_a_process_run(dsn, victim.pid, ledger),
            30,
            dsn,
        )
        workers += [site.spawn(k, env=env, app="fence_app:queue") for k in (2, 3)]
        for worker in workers:
            assert worker.wait_for_event("worker_started", timeout=30)
        # The link stays down a lease after the rescued jobs started elsewhere: a
        # worker that learnt of its fate only from the database would run them all
        # along beside their new runs.
        old_id = cut_past_the_lease(site, 1, victim, figures, hold=LEASE)
        rejoined(site, victim, old_id, 1)
        wait_for("every job finished", lambda: all_done(dsn), 90, dsn)
        stop_all(workers)
        events = victim.events()
    finally:
        for w in workers:
            w.close()
    assert one(dsn, "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'") == jobs
    runs = fenced_runs_apart(ledger)
    fenced = [e for e in events if e.get("event") == "worker_fenced"]
    assert len(fenced) == 1, fenced
    assert fenced[0]["worker_id"] == old_id
    # A lease minus the margin (a fifth) after the last beat was sent: before the
    # rescue, which counts a whole lease from when the database took that beat.
    assert LEASE * 0.8 <= fenced[0]["seconds_since_beat"] < LEASE, fenced
    assert fenced[0]["running"] >= 2
    given_up = [e for e in events if e.get("event") == "job_abandoned"]
    assert given_up, "the cut-off worker gave up none of its jobs"
    with capsys.disabled():
        print(
            f"\n{len(runs)} runs of {jobs} jobs, none beside another of its job; "
            f"{len(given_up)} given up by the fenced worker; " + "; ".join(figures.notes)
        )


def _faketime_library() -> str:
    found = sorted(Path("/usr/lib").glob(FAKETIME_GLOB))
    if not found:
        skip_or_fail("libfaketime is not installed (Debian: apt-get install faketime)")
    return str(found[0])


def skewed(library: str, seconds: int) -> dict[str, str]:
    """The environment that shifts a process's wall clock (CLOCK_REALTIME) by
    ``seconds``; its monotonic clock is left alone, as a skewed host's would be."""
    return {
        "LD_PRELOAD": library,
        "FAKETIME": f"{seconds:+d}",
        "DONT_FAKE_MONOTONIC": "1",
    }


def logged_skew(worker: WorkerProcess) -> float:
    """How far ahead of ours the worker's clock is, from its worker_started line."""
    event = worker.wait_for_event("worker_started", timeout=30)
    stamp = dt.datetime.fromisoformat(event["timestamp"])
    return (stamp - dt.datetime.now(dt.UTC)).total_seconds()


@pytest.mark.slow
def test_clock_skew_between_hosts_does_not_matter(site, capsys):
    """h1 on time, h2 an hour ahead, h3 an hour behind. Long jobs (past the lease) on
    every host are never rescued; delayed jobs run once the database says they are
    due; a periodic schedule gets the database's ticks; and with h1 gone, h3 (an hour
    behind) rescues cut-off h2's jobs (an hour ahead) a lease after h2's last beat."""
    library = _faketime_library()
    dsn = site.dsn
    figures = Figures()
    prepare(dsn, 0)
    began = time.monotonic()
    offsets = {1: 0, 2: HOUR, 3: -HOUR}
    workers = {
        k: site.spawn(k, env=skewed(library, offset) if offset else None)
        for k, offset in offsets.items()
    }
    try:
        for k, offset in offsets.items():
            skew = logged_skew(workers[k])
            assert abs(skew - offset) < 60, f"host {k}'s clock is off by {skew:.0f} s"
        with psycopg.connect(dsn, autocommit=True) as conn:
            schedule_set = conn.execute("SELECT now()").fetchone()[0]
            conn.execute(
                "SELECT pgqueue.set_schedule('skew_tick', 'fault.tx', every => interval '1 s',"
                " args => '{\"n\": -1}', queue => 'faults', max_attempts => 20)"
            )
        # Long jobs (up to 1.5 leases) everywhere, and delayed ones.
        enqueue(dsn, range(24), pause=(LEASE * 0.5, LEASE * 1.5))
        enqueue(dsn, range(100, 112), pause=(0.0, 0.1), delay=2.0)
        wait_for("the long and the delayed jobs finished", lambda: all_done_but_ticks(dsn), 40, dsn)
        # A host an hour ahead or behind holds its leases: nothing was rescued.
        assert one(dsn, WORKER_LOST) == 0, diagnose(dsn)
        pids = {w.pid for w in workers.values()}
        ran_on = {
            r for (r,) in _rows(dsn, "SELECT DISTINCT pid FROM ledger WHERE n BETWEEN 0 AND 23")
        }
        assert ran_on == pids, f"long jobs ran on {ran_on}, not on every host {pids}"
        early = _rows(
            dsn,
            "SELECT l.job_id, l.started - j.run_at FROM ledger l JOIN pgqueue.jobs j "
            "ON j.id = l.job_id WHERE l.n BETWEEN 100 AND 111 AND NOT l.started BETWEEN j.run_at "
            "AND j.run_at + interval '10 s'",
        )
        assert early == [], f"delayed jobs run before they were due, or far after: {early}"

        # h1 leaves: h3, an hour behind, is the only one left to rescue h2, an hour ahead.
        assert workers[1].stop() == 0
        enqueue(dsn, range(200, 240), pause=(0.5, 1.0))
        old_id = cut_past_the_lease(site, 2, workers[2], figures)
        assert one(dsn, WORKER_LOST) >= 1
        assert any(e.get("event") == "jobs_rescued" for e in workers[3].events())
        rejoined(site, workers[2], old_id, 2)
        wait_for("every job finished", lambda: all_done_but_ticks(dsn), 40, dsn)

        with psycopg.connect(dsn, autocommit=True) as conn:
            # Paused, not removed: its ticks' rows go with it.
            conn.execute("SELECT pgqueue.pause_schedule('skew_tick')")
            schedule_paused = conn.execute("SELECT now()").fetchone()[0]
        wait_for("the schedule's last jobs finished", lambda: all_done(dsn), 20, dsn)
        check_ticks(dsn, schedule_set, schedule_paused)
        figures.seconds = time.monotonic() - began
        stop_all(list(workers.values()))
    finally:
        for w in workers.values():
            w.close()
    figures.jobs = one(dsn, "SELECT count(*) FROM pgqueue.jobs")
    check_invariants(dsn, figures)
    check_rescued_runs(dsn, old_id)
    with capsys.disabled():
        print("\n" + figures.report("hosts an hour ahead and behind"))


WORKER_LOST = (
    "SELECT count(*) FROM pgqueue.jobs, jsonb_array_elements(errors) e "
    "WHERE e->>'type' = 'pgqueue.WorkerLost'"
)


def _rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def all_done_but_ticks(dsn: str) -> bool:
    return not one(
        dsn,
        "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running') "
        "AND (args->>'n')::int >= 0",
    )


def check_ticks(dsn: str, schedule_set: dt.datetime, schedule_paused: dt.datetime) -> None:
    """The schedule's ticks are those of the database's clock: one each whole second,
    none left out, from soon after its setting (a scheduler reads new schedules at
    least every 5 s and starts them at their next tick) to its pause, each enqueued
    once the database's clock had reached it. A scheduler an hour ahead would write
    ticks an hour early; one an hour behind, ticks an hour old."""
    ticks = _rows(
        dsn,
        "SELECT tick, enqueued_at FROM pgqueue.schedule_ticks WHERE schedule = 'skew_tick' "
        "ORDER BY tick",
    )
    assert len(ticks) >= 2, f"the schedule got {len(ticks)} ticks"
    second = dt.timedelta(seconds=1)
    first, last = ticks[0][0], ticks[-1][0]
    assert schedule_set < first <= schedule_set + 10 * second, (schedule_set, first)
    assert schedule_paused - 3 * second <= last <= schedule_paused, (schedule_paused, last)
    assert [t for t, _ in ticks] == [first + n * second for n in range(len(ticks))], ticks
    for tick, enqueued_at in ticks:
        assert tick <= enqueued_at < tick + 5 * second, (tick, enqueued_at)
