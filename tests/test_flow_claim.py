"""Flow control at the claim, one statement at a time on a real database: queues take
turns, concurrency and rate limits per queue and per key, keys take turns, and the
library and SQL faces that set and show limits. (Real worker processes racing under
limits: test_flow_workers.py.)"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from flowkit import WORKER, claim, enqueue, finish, key_of

import pgqueue
from pgqueue import driver_sync
from pgqueue.errors import InvalidLimitError
from pgqueue.executors import PsycopgExecutor
from pgqueue.flow import KeyLimit, Rate
from pgqueue.locks import FLOW
from pgqueue.rows import claimed_from_row
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


# --- fairness between queues ------------------------------------------------------------


def test_a_queue_behind_another_queues_backlog_is_served_at_the_next_claim(conn, q):
    # The case a new user met: one worker serving emails and crm; a crm job enqueued
    # after 10,000 emails waited for all of them, because one claim ordered both queues
    # together. Now the queues take turns within every claim.
    enqueue(q, "emails", 10_000)
    (crm,) = enqueue(q, "crm", 1)
    first = driver_sync.claim(PsycopgExecutor(conn), ["emails", "crm"], 10, WORKER)
    assert crm in [j.id for j in first]
    assert Counter(j.queue for j in first) == {"emails": 9, "crm": 1}


def test_the_plain_claim_leaves_limited_queues_to_the_flow_claim(conn, q):
    # A worker that knew of no limit claims with claim_jobs, which leaves a limited
    # queue out and says so; the driver then claims it under its limits at once.
    enqueue(q, "free", 5)
    enqueue(q, "capped", 5)
    q.set_limit_sync("capped", concurrency=1)
    ex = PsycopgExecutor(conn)
    claimed = driver_sync.claim_flow(ex, ["free", "capped"], 10, WORKER, limited=False)
    assert claimed.limited
    assert Counter(j.queue for j in claimed.jobs) == {"free": 5, "capped": 1}
    assert q.clear_limit_sync("capped")
    claimed = driver_sync.claim_flow(ex, ["free", "capped"], 10, WORKER, limited=True)
    assert not claimed.limited
    assert Counter(j.queue for j in claimed.jobs) == {"capped": 4}


def test_queues_take_turns_by_rank_and_priority_holds_within_a_queue(conn, q):
    enqueue(q, "a", 5)
    enqueue(q, "b", 5)
    urgent = q.enqueue_sync("t", {}, queue="a", priority=10).id
    got = claim(conn, ["a", "b"], 4)
    assert Counter(j.queue for j in got) == {"a": 2, "b": 2}
    assert urgent in [j.id for j in got]


# --- concurrency limits ------------------------------------------------------------------


def test_a_queue_limit_caps_running_jobs_at_every_claim(conn, q):
    q.set_limit_sync("emails", concurrency=3)
    enqueue(q, "emails", 20)
    first = claim(conn, ["emails"], 10)
    assert len(first) == 3
    assert claim(conn, ["emails"], 10) == []  # full: nothing more until one finishes
    finish(conn, [first[0].id])
    assert len(claim(conn, ["emails"], 10)) == 1


def complete_and_claim(conn, done: list, queues: list[str], want: int) -> tuple[list, bool]:
    """Write ``done`` as succeeded and claim in the same statement, as a worker's write
    of outcomes refills the slots they free (complete_and_claim_limited, flow.sql)."""
    outcomes = ([j.id for j in done], [None] * len(done), [j.attempt for j in done])
    claim_params = (queues, want, WORKER, FLOW.key)
    rows = PsycopgExecutor(conn).fetch(
        query("complete_and_claim_limited"), (*outcomes, *claim_params)
    )
    ids = [r["id"] for r in rows]
    return [claimed_from_row(r) for r in rows if r["id"] is not None], None in ids


def test_a_write_of_outcomes_refills_the_slots_it_frees_and_no_more(conn, q):
    q.set_limit_sync("emails", concurrency=3)
    enqueue(q, "emails", 20)
    first = claim(conn, ["emails"], 10)
    assert len(first) == 3
    # Two finish: their slots are free for the claim in the same statement, the
    # third's is not.
    refill, limited = complete_and_claim(conn, first[:2], ["emails"], 10)
    assert (len(refill), limited) == (2, True)
    rows = conn.execute(
        "SELECT state::text, count(*) FROM pgqueue.jobs WHERE id = ANY(%s) GROUP BY 1",
        ([j.id for j in first],),
    ).fetchall()
    assert dict(rows) == {"succeeded": 2, "running": 1}
    running = conn.execute("SELECT count(*) FROM pgqueue.jobs WHERE state = 'running'")
    assert running.fetchone()[0] == 3
    # A stale outcome (the attempt moved on) frees nothing: nothing is claimed for it.
    stale = [dataclasses.replace(first[2], attempt=first[2].attempt + 1)]
    assert complete_and_claim(conn, stale, ["emails"], 10) == ([], True)
    # Nothing to write at all: a plain claim, still under the limit.
    assert complete_and_claim(conn, [], ["emails"], 10) == ([], True)


def test_a_limited_and_a_plain_queue_share_one_claim(conn, q):
    q.set_limit_sync("slow", concurrency=2)
    enqueue(q, "slow", 10)
    enqueue(q, "fast", 10)
    got = claim(conn, ["slow", "fast"], 10)
    assert Counter(j.queue for j in got) == {"slow": 2, "fast": 8}


def test_a_per_key_limit_and_an_override(conn, q):
    q.set_limit_sync("tenants", key_concurrency=1, keys={"big": KeyLimit(concurrency=3)})
    for key in ("a", "b", "big"):
        enqueue(q, "tenants", 10, key)
    enqueue(q, "tenants", 2)  # no key: no per-key limit
    got = claim(conn, ["tenants"], 50)
    assert key_of(conn, got) == {"a": 1, "b": 1, "big": 3, None: 2}
    assert claim(conn, ["tenants"], 50) == []


def test_a_paused_limited_queue_is_skipped(conn, q):
    q.set_limit_sync("p", concurrency=5)
    enqueue(q, "p", 3)
    q.pause_sync("p")
    assert claim(conn, ["p"], 10) == []
    q.resume_sync("p")
    assert len(claim(conn, ["p"], 10)) == 3


def test_clearing_the_limit_makes_the_queue_plain_again(conn, q):
    q.set_limit_sync("c", concurrency=1)
    enqueue(q, "c", 5)
    assert len(claim(conn, ["c"], 10)) == 1
    assert q.clear_limit_sync("c") is True
    assert q.clear_limit_sync("c") is False
    assert len(claim(conn, ["c"], 10)) == 4


# --- keys take turns ---------------------------------------------------------------------


def test_a_small_key_is_not_starved_by_a_large_backlog(conn, q):
    # 100,000 jobs of one key, then 100 of another: the keys take turns, so each claim
    # of 10 takes 5 of each while both have jobs. The bound: all 100 small-key jobs
    # start within the first 200 starts (100 turns each), whatever the backlog.
    q.set_limit_sync("tenants")  # no limit: the keys take turns
    enqueue(q, "tenants", 100_000, "big")
    small = set(enqueue(q, "tenants", 100, "small"))
    started: list[int] = []
    while small - set(started):
        got = claim(conn, ["tenants"], 10)
        assert got, "the claim found nothing while small-key jobs were queued"
        started += [j.id for j in got]
        finish(conn, [j.id for j in got])
        assert len(started) <= 200, "the small key waited behind the backlog"
    assert len(started) == 200


def test_keys_rotate_across_claims_when_each_is_limited_to_one(conn, q):
    q.set_limit_sync("k", key_concurrency=1)
    for key in ("k1", "k2", "k3", "k4"):
        enqueue(q, "k", 5, key)
    seen: list[str] = []
    for _ in range(8):
        got = claim(conn, ["k"], 1)
        assert len(got) == 1
        seen += list(key_of(conn, got))
        finish(conn, [got[0].id])
    # Round robin: every key once before any twice.
    assert sorted(seen[:4]) == ["k1", "k2", "k3", "k4"]
    assert sorted(seen[4:]) == ["k1", "k2", "k3", "k4"]


# --- rate limits -------------------------------------------------------------------------


def test_a_rate_limit_starts_at_most_n_per_window_and_says_when_the_next_is_due(conn, q):
    q.set_limit_sync("api", rate="4/10s")
    enqueue(q, "api", 10)
    assert len(claim(conn, ["api"], 10)) == 4
    assert claim(conn, ["api"], 10) == []
    wait = driver_sync.next_claim_wait(PsycopgExecutor(conn), ["api"])
    assert wait.limited
    assert wait.due_in is not None
    assert 0 < wait.due_in <= 10
    # Pretend the window has passed: the next 4 may start.
    conn.execute("UPDATE pgqueue.job_starts SET started_at = started_at - interval '10 s'")
    assert len(claim(conn, ["api"], 10)) == 4


def test_a_per_key_rate_limit(conn, q):
    q.set_limit_sync("api", key_rate="2/h")
    enqueue(q, "api", 5, "x")
    enqueue(q, "api", 5, "y")
    got = claim(conn, ["api"], 10)
    assert key_of(conn, got) == {"x": 2, "y": 2}
    finish(conn, [j.id for j in got])
    assert claim(conn, ["api"], 10) == []
    wait = driver_sync.next_claim_wait(PsycopgExecutor(conn), ["api"])
    assert wait.due_in is not None
    assert 3500 < wait.due_in <= 3600


def test_a_key_rate_of_its_own_says_when_its_next_start_is_due(conn, q):
    # The queue's keys have no rate; one key has its own: the idle check still finds it
    # (limited_queue_due looks for full key windows only where some key has a rate).
    q.set_limit_sync("api", concurrency=100)
    q.set_key_limit_sync("api", "x", rate="2/h")
    enqueue(q, "api", 5, "x")
    got = claim(conn, ["api"], 10)
    assert key_of(conn, got) == {"x": 2}
    finish(conn, [j.id for j in got])
    assert claim(conn, ["api"], 10) == []
    wait = driver_sync.next_claim_wait(PsycopgExecutor(conn), ["api"])
    assert wait.due_in is not None
    assert 3500 < wait.due_in <= 3600


def test_a_concurrency_blocked_queue_gives_no_due_time_to_spin_on(conn, q):
    q.set_limit_sync("c", concurrency=1)
    enqueue(q, "c", 3)
    assert len(claim(conn, ["c"], 10)) == 1
    wait = driver_sync.next_claim_wait(PsycopgExecutor(conn), ["c"])
    assert wait.due_in is None
    assert wait.limited


# --- faces -------------------------------------------------------------------------------


def test_rates_parse_and_bad_limits_are_refused():
    assert Rate.parse("100/m") == Rate(100, timedelta(minutes=1))
    assert Rate.parse("10/30s") == Rate(10, timedelta(seconds=30))
    assert Rate.parse("3/500ms") == Rate(3, timedelta(milliseconds=500))
    assert str(Rate.parse("5 / h")) == "5/h"
    for bad in ("100", "x/m", "0/m", "5/y", "5/0s"):
        with pytest.raises(InvalidLimitError):
            Rate.parse(bad)
    with pytest.raises(InvalidLimitError):
        pgqueue.Queue("postgresql://unused").limit("q", concurrency=0)


def test_limit_status_shows_running_against_limits(conn, q):
    q.set_limit_sync("s", concurrency=5, rate="100/m", key_concurrency=2)
    q.set_key_limit_sync("s", "vip", concurrency=4)
    enqueue(q, "s", 3, "vip")
    enqueue(q, "s", 2, "other")
    claim(conn, ["s"], 10)
    rows = {(r.queue, r.concurrency_key): r for r in q.limits_sync()}
    queue_row = rows[("s", None)]
    assert (queue_row.concurrency, queue_row.running, queue_row.recent_starts) == (5, 5, 5)
    assert queue_row.rate == Rate(100, timedelta(minutes=1))
    assert (rows[("s", "vip")].concurrency, rows[("s", "vip")].running) == (4, 3)
    assert (rows[("s", "other")].concurrency, rows[("s", "other")].running) == (2, 2)
    assert q.clear_key_limit_sync("s", "vip") is True


def test_the_sql_functions_set_and_clear_limits(conn):
    conn.execute("SELECT pgqueue.set_queue_limit('sq', concurrency => 7)")
    conn.execute("SELECT pgqueue.set_key_limit('sq', 'k', rate_count => 1, rate_period => '1 s')")
    rows = conn.execute(
        "SELECT queue, concurrency_key, concurrency, rate_count FROM pgqueue.limit_status"
        " ORDER BY queue, concurrency_key NULLS FIRST"
    ).fetchall()
    assert rows == [("sq", None, 7, None), ("sq", "k", None, 1)]
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("SELECT pgqueue.set_queue_limit('sq', concurrency => 0)")
    assert conn.execute("SELECT pgqueue.clear_queue_limit('sq')").fetchone()[0] is True
    assert conn.execute("SELECT count(*) FROM pgqueue.key_limits").fetchone()[0] == 0


# --- cost --------------------------------------------------------------------------------


def test_the_flow_claim_functions_are_planned_once_per_session(conn):
    # With the custom plans the server picked, each limited claim planned its statements
    # afresh: about as long as running them, while the claims of a queue take turns under
    # its lock. Generic plans are made once per session. (The cost is measured by
    # benchmarks/flow.py in make bench, never timed here.)
    names = ["claim_jobs_limited", "claim_limited", "limited_queue_due", "reserve_starts"]
    rows = conn.execute(
        "SELECT p.proname, p.oid::regprocedure::text, p.proconfig FROM pg_proc p"
        " JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'"
        " WHERE p.pronamespace = 'pgqueue'::regnamespace AND p.proname = ANY(%s)",
        (names,),
    ).fetchall()
    assert {name for name, _, _ in rows} == set(names)
    assert {sig: config for _, sig, config in rows} == {
        sig: ["plan_cache_mode=force_generic_plan"] for _, sig, _ in rows
    }
