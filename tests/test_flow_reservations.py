"""Rate-only queues reserve their starts before the claim (pgqueue.reserve_starts), then
claim without the queue's lock: the log stays exact, what a claim does not use goes
back, a reservation never claimed only leaves the rate unused, and the locked claims
(other limits, refills, the previous release's workers) count the reservations too.
(The 60-second rate test with worker processes: test_flow_workers.py.)"""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import pytest
from flowkit import WORKER, claim, enqueue, finish, key_of

import pgqueue
from pgqueue import driver_sync
from pgqueue.executors import PsycopgExecutor
from pgqueue.locks import FLOW
from pgqueue.sql import query


@pytest.fixture
def conn(dsn: str):
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def q(dsn: str):
    queue = pgqueue.Queue(dsn)
    yield queue
    queue.close_sync()


def reserve(conn, queues: list[str], want: int) -> dict[str, tuple]:
    """reserve_starts as the driver calls it, in a transaction of its own."""
    rows = PsycopgExecutor(conn).fetch(query("reserve_starts"), (queues, want, FLOW.key))
    return {r["queue_name"]: (r["granted"], r["at"]) for r in rows}


def log(conn, queue: str) -> list[tuple]:
    return conn.execute(
        "SELECT started_at, starts FROM pgqueue.job_starts"
        " WHERE queue = %s AND concurrency_key = '' ORDER BY started_at",
        (queue,),
    ).fetchall()


class CountingExecutor(PsycopgExecutor):
    """A real executor that counts its statements (round trips)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__(conn)
        self.statements: list[str] = []

    def fetch(self, sql, params):  # type: ignore[no-untyped-def]
        self.statements.append(sql)
        return super().fetch(sql, params)


def test_only_rate_only_queues_reserve(conn, q):
    q.set_limit_sync("rated", rate="10/m")
    q.set_limit_sync("capped", concurrency=2)
    q.set_limit_sync("both", concurrency=2, rate="10/m")
    q.set_limit_sync("keyed", rate="10/m", key_concurrency=1)
    q.set_limit_sync("paused", rate="10/m")
    q.pause_sync("paused")
    got = reserve(conn, ["rated", "capped", "both", "keyed", "paused", "plain"], 4)
    # A limited queue that is not rate-only comes back with nothing granted: its claim
    # takes the lock. Plain and paused queues do not come back.
    assert {name: granted for name, (granted, _) in got.items()} == {
        "rated": 4,
        "capped": None,
        "both": None,
        "keyed": None,
    }
    assert [starts for _, starts in log(conn, "rated")] == [4]


def test_a_claim_takes_its_reservation_and_gives_back_what_it_did_not_find(conn, q):
    q.set_limit_sync("api", rate="10/m")
    enqueue(q, "api", 3)
    ex = CountingExecutor(conn)
    claimed = driver_sync.claim_flow(ex, ["api"], 8, WORKER, limited=True)
    assert len(claimed.jobs) == 3
    assert claimed.limited
    assert not claimed.locked  # rate-only: no refills
    assert len(ex.statements) == 2  # the reservation, then the claim
    # The log holds the 3 started, at the time every one of them started.
    ((at, starts),) = log(conn, "api")
    assert starts == 3
    started = conn.execute(
        "SELECT DISTINCT started_at FROM pgqueue.jobs WHERE queue = 'api' AND state = 'running'"
    ).fetchall()
    assert started == [(at,)]
    enqueue(q, "api", 20)
    assert len(claim(conn, ["api"], 20)) == 7  # 10 a minute, 3 used
    assert sum(starts for _, starts in log(conn, "api")) == 10


def test_a_claim_that_finds_nothing_leaves_no_start_logged(conn, q):
    q.set_limit_sync("api", rate="10/m")
    assert claim(conn, ["api"], 5) == []
    assert log(conn, "api") == []


def test_a_full_window_costs_one_statement_and_no_claim(conn, q):
    q.set_limit_sync("api", rate="2/m")
    enqueue(q, "api", 5)
    assert len(claim(conn, ["api"], 5)) == 2
    ex = CountingExecutor(conn)
    claimed = driver_sync.claim_flow(ex, ["api"], 5, WORKER, limited=True)
    assert claimed.jobs == []
    assert claimed.limited
    assert len(ex.statements) == 1  # the reservation found the window full


def test_a_reservation_never_claimed_only_leaves_the_rate_unused(conn, q):
    # The worker that reserved died before its claim: its starts stay logged until they
    # leave the window. Fewer start, never more.
    q.set_limit_sync("api", rate="10/m")
    enqueue(q, "api", 20)
    assert reserve(conn, ["api"], 6)["api"][0] == 6
    assert len(claim(conn, ["api"], 20)) == 4
    assert claim(conn, ["api"], 20) == []
    # Once the window has passed (pretended), the full rate is back.
    conn.execute("UPDATE pgqueue.job_starts SET started_at = started_at - interval '1 minute'")
    assert len(claim(conn, ["api"], 20)) == 10


def test_locked_claims_count_the_reservations(conn, q):
    # A refill (complete_and_claim_limited, under the lock, no reservation) or a worker
    # of the previous release (claim_jobs_limited with four arguments) on the same
    # rate-only queue counts the starts reserved by the others, and logs its own.
    q.set_limit_sync("api", rate="10/m")
    enqueue(q, "api", 30)
    assert reserve(conn, ["api"], 4)["api"][0] == 4
    old = conn.execute(
        "SELECT count(*) FROM pgqueue.claim_jobs_limited(%s, 20, %s, %s) WHERE id IS NOT NULL",
        (["api"], WORKER, FLOW.key),
    ).fetchone()[0]
    assert old == 6
    assert claim(conn, ["api"], 20) == []
    assert sum(starts for _, starts in log(conn, "api")) == 10


def test_limits_changed_after_the_reservation_give_it_back(conn, q):
    q.set_limit_sync("api", rate="10/m")
    enqueue(q, "api", 5)
    granted, at = reserve(conn, ["api"], 5)["api"]
    q.set_limit_sync("api", rate="10/m", concurrency=1)  # no longer rate-only
    rows = PsycopgExecutor(conn).fetch(
        query("claim_jobs_limited"), (["api"], 5, WORKER, FLOW.key, ["api"], [granted], [at])
    )
    assert [r["id"] for r in rows] == [None]  # nothing without the lock, the marker
    assert log(conn, "api") == []
    assert len(claim(conn, ["api"], 5)) == 1  # now under the lock, at its concurrency


def test_keys_of_a_rate_only_queue_still_take_turns(conn, q):
    q.set_limit_sync("api", rate="100/m")
    for key in ("a", "b", "c"):
        enqueue(q, "api", 10, key)
    enqueue(q, "api", 10)  # unkeyed: one more key
    first = claim(conn, ["api"], 4)
    assert key_of(conn, first) == {"a": 1, "b": 1, "c": 1, None: 1}
    finish(conn, [j.id for j in first])
    turns = Counter[str | None]()
    for _ in range(3):
        turns.update(key_of(conn, claim(conn, ["api"], 2)))
    # Unkeyed jobs take a turn in every claim (ahead of the walk); the walk's cursor
    # moved on from key to key rather than starting again at "a".
    assert turns == {None: 3, "a": 1, "b": 1, "c": 1}


def test_several_rate_only_queues_share_one_claim(conn, q):
    q.set_limit_sync("x", rate="100/m")
    q.set_limit_sync("y", rate="100/m")
    enqueue(q, "x", 10)
    enqueue(q, "y", 10)
    enqueue(q, "plain", 10)
    got = claim(conn, ["x", "y", "plain"], 9)
    assert Counter(j.queue for j in got) == {"x": 3, "y": 3, "plain": 3}
    # Each reservation was of the whole claim; what a queue did not take went back.
    assert [sum(s for _, s in log(conn, name)) for name in ("x", "y")] == [3, 3]
    # A queue with nothing queued leaves its share to the others.
    got = claim(conn, ["x", "empty", "plain"], 8)
    assert len(got) == 8


def test_a_locked_queue_takes_what_an_empty_rate_only_queue_left(conn, q):
    # The queues under their locks are offered their share first; what the reserved
    # queues then leave goes back to them in the same claim.
    q.set_limit_sync("rated", rate="100/m")
    q.set_limit_sync("capped", concurrency=20)
    enqueue(q, "capped", 20)
    got = claim(conn, ["rated", "capped"], 10)
    assert Counter(j.queue for j in got) == {"capped": 10}
    assert log(conn, "rated") == []  # its reservation went back whole


def test_the_reservation_commits_asynchronously_when_asked(conn, q):
    # The worker's reservation is a transaction of its own: the claim that uses it commits
    # durably after it, flushing the WAL past it. Called within a longer transaction
    # (commit_async false), that transaction's commit is not touched.
    q.set_limit_sync("api", rate="100/m")
    conn.execute("SET synchronous_commit = on")  # the test server's default is off
    call = "SELECT current_setting('synchronous_commit') FROM pgqueue.reserve_starts(%s, 1, %s, %s)"
    assert conn.execute(call, (["api"], FLOW.key, True)).fetchone()[0] == "off"
    assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"  # for that one only
    with conn.transaction():
        assert conn.execute(call, (["api"], FLOW.key, False)).fetchone()[0] == "on"


def test_a_reserved_claim_takes_no_row_lock_before_its_advisory_locks(dsn, conn, q):
    # A worker serving a rate-only queue with keys ("rated", whose walk locks the queue's
    # row) and a queue with a concurrency limit ("capped", under its advisory lock), while
    # another transaction holds both queues' advisory locks and then writes "rated"'s row,
    # as a refill's locked claim walking its keys does. Were the reserved walk made
    # first, the claim would hold that row while waiting for "capped"'s lock: a deadlock.
    q.set_limit_sync("rated", rate="100/m")
    q.set_limit_sync("capped", concurrency=5)
    enqueue(q, "rated", 3, "k")
    enqueue(q, "capped", 3)
    granted, at = reserve(conn, ["rated", "capped"], 4)["rated"]
    with psycopg.connect(dsn) as holder:
        for name in ("capped", "rated"):
            holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (FLOW.key, name))
        result: dict[str, object] = {}

        def worker_claim() -> None:
            with psycopg.connect(dsn, autocommit=True) as c:
                try:
                    rows = PsycopgExecutor(c).fetch(
                        query("claim_jobs_limited"),
                        (["rated", "capped"], 6, WORKER, FLOW.key, ["rated"], [granted], [at]),
                    )
                    result["ids"] = [r["id"] for r in rows if r["id"] is not None]
                except psycopg.Error as exc:
                    result["error"] = exc

        thread = threading.Thread(target=worker_claim)
        thread.start()
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        deadline = time.monotonic() + 10
        while conn.execute(waiting).fetchone()[0] == 0:  # the claim waits for a lock
            assert time.monotonic() < deadline, "the claim never waited"
            time.sleep(0.01)
        holder.execute("SET lock_timeout = '5s'")
        holder.execute("UPDATE pgqueue.queue_limits SET key_cursor = 'k' WHERE queue = 'rated'")
        holder.commit()
        thread.join(timeout=30)
    assert "error" not in result
    assert len(result["ids"]) == 6  # type: ignore[arg-type]
