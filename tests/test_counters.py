"""The job counters of migration 0019, on a real PostgreSQL: kept by triggers as jobs
move, they match a recount of the rows for as long as no row leaves, the counters never
go down (pruning, deletes, retries by hand, TRUNCATE, several API processes, a restart),
concurrent rollups lose nothing, the backfill of the migration counts the rows it finds,
and the reads never scan pgqueue.jobs."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import asyncpg
import psycopg
import pytest
from counterkit import BOUNDS_US, GAUGES, counted, recount
from litestar.testing import AsyncTestClient

import pgqueue
from pgqueue import driver, migrate
from pgqueue.admin import Admin
from pgqueue.executors import AsyncpgExecutor
from pgqueue.locks import COUNTERS
from pgqueue.pools import acquire
from pgqueue.retry import RetryPolicy
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service import metrics as metrics_module
from pgqueue.service.auth import create_key
from pgqueue.sql import query
from pgqueue.testing import running_worker, wait_for_job
from pgqueue.worker.counters import CounterRollup


def gauges(figures: dict[tuple[str, str, str], int]) -> dict[tuple[str, str, str], int]:
    return {k: v for k, v in figures.items() if k[2] in GAUGES}


def counters(figures: dict[tuple[str, str, str], int]) -> dict[tuple[str, str, str], int]:
    return {k: v for k, v in figures.items() if k[2] not in GAUGES}


def of_task(figures: dict[tuple[str, str, str], int], task: str) -> dict[str, int]:
    """One task's figures summed over its queues, by metric."""
    summed: dict[str, int] = {}
    for (_, t, metric), n in figures.items():
        if t == task:
            summed[metric] = summed.get(metric, 0) + n
    return summed


def roll_up(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pgqueue.roll_up_job_counters()").fetchone()[0]


def assert_never_lower(before: dict, after: dict) -> None:
    lowered = {k: (v, after.get(k, 0)) for k, v in counters(before).items() if after.get(k, 0) < v}
    assert not lowered, f"counters went down: {lowered}"


# --- the histogram's bounds, defined once ------------------------------------------------


def test_the_duration_bounds_of_the_schema_are_those_of_metrics_py(dsn):
    with psycopg.connect(dsn) as conn:
        bounds = conn.execute("SELECT pgqueue.job_duration_bounds()").fetchone()[0]
        assert tuple(bounds) == metrics_module.DURATION_BUCKETS
        # Each bound is the top of its bucket; a microsecond more is the next one.
        for k, us in enumerate(BOUNDS_US):
            at, above = conn.execute(
                "SELECT pgqueue.job_duration_bucket(%s), pgqueue.job_duration_bucket(%s)",
                (us, us + 1),
            ).fetchone()
            assert (at, above) == (k, k + 1)


# --- counters against a recount ----------------------------------------------------------


async def test_counters_match_a_recount_as_a_worker_runs_jobs(dsn):
    queue = pgqueue.Queue(dsn)

    @queue.task(name="ok", queue="mail")
    async def ok() -> str:
        return "done"

    @queue.task(name="broken", queue="mail", max_attempts=1)
    async def broken() -> None:
        raise RuntimeError("no")

    @queue.task(name="flaky", queue="mail", max_attempts=3, retry=RetryPolicy(base=0, jitter=0))
    async def flaky() -> str:
        if pgqueue.current_job().attempt < 3:
            raise RuntimeError("not yet")
        return "third time"

    snoozed: set[int] = set()

    @queue.task(name="sleepy", queue="mail")
    async def sleepy() -> str:
        job_id = pgqueue.current_job().id
        if job_id not in snoozed:
            snoozed.add(job_id)
            raise pgqueue.Snooze(0)  # gives its attempt back: no retry
        return "rested"

    ids = [
        (await queue.enqueue(task, queue="mail")).id
        for task in ("ok", "ok", "broken", "flaky", "sleepy", "ok")
    ]
    await queue.enqueue("later", queue="mail", delay=3600)
    cancelled = (await queue.enqueue("ok", queue="other")).id
    await queue.cancel(cancelled)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert counted(conn) == recount(conn)
        roll_up(conn)
        assert counted(conn) == recount(conn)

    async with running_worker(queue, concurrency=4):
        for job_id in ids:
            await wait_for_job(queue, job_id, timeout=30)
    await queue.close()

    with psycopg.connect(dsn, autocommit=True) as conn:
        # A rescue by hand (as pgqueue.rescue does: running back to queued), then a claim
        # and a failure: the rescued attempt is a retry once the next one ends.
        conn.execute(
            "INSERT INTO pgqueue.jobs (queue, task, state, attempts, started_at) "
            "VALUES ('mail', 'manual', 'running', 1, now())"
        )
        conn.execute("UPDATE pgqueue.jobs SET state = 'queued' WHERE task = 'manual'")
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'running', attempts = attempts + 1, "
            "started_at = now() - interval '2 s' WHERE task = 'manual'"
        )
        conn.execute(
            "UPDATE pgqueue.jobs SET state = 'failed', finished_at = now() WHERE task = 'manual'"
        )
        figures = counted(conn)
        assert figures == recount(conn)
        assert figures[("mail", "flaky", "retried_total")] == 2
        assert ("mail", "sleepy", "retried_total") not in figures
        assert figures[("mail", "manual", "retried_total")] == 1
        assert figures[("mail", "ok", "succeeded_total")] == 3
        assert figures[("other", "ok", "cancelled_total")] == 1
        assert roll_up(conn) > 0
        assert counted(conn) == figures
        assert conn.execute("SELECT count(*) FROM pgqueue.job_counter_deltas").fetchone() == (0,)
        # A move to another queue and task by hand moves the gauges with it; what was
        # counted stays where it was counted.
        conn.execute("UPDATE pgqueue.jobs SET queue = 'moved', task = 'other' WHERE task = 'later'")
        moved = counted(conn)
        assert gauges(moved) == gauges(recount(conn))
        assert moved[("moved", "other", "queued")] == 1
        assert counters(moved) == counters(figures)


async def test_the_rescue_counts_its_jobs_and_live_workers_are_those_within_their_lease(dsn):
    """pgqueue_jobs_rescued_total and pgqueue_workers_live (the alert rules' figures): the
    rescue's own statement counts what it hands back; a worker past its lease is not live."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency, last_heartbeat, lease)
            VALUES ('00000000-0000-0000-0000-00000000000a', 'h', 1, '{mail}', 1,
                    now() - interval '1 minute', interval '10 seconds'),
                   ('00000000-0000-0000-0000-00000000000b', 'h', 2, '{mail}', 1,
                    now(), interval '10 seconds')
            """
        )
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, attempts, max_attempts, started_at,
                                      worker_id)
            SELECT 'mail', 'send', 'running', a, 2, now(), '00000000-0000-0000-0000-00000000000a'
            FROM unnest(ARRAY[1, 2]) AS a
            """
        )
        queue = pgqueue.Queue(dsn)
        try:
            admin = Admin(queue)
            assert await admin.live_workers() == 1
            (before,) = await admin.job_counters()
            assert before.rescued == 0
            raw = psycopg.RawCursor(conn)  # $1 placeholders, as the worker's rescue runs it
            rescued = raw.execute(query("rescue_jobs"), (10.0, 123)).fetchall()
            assert sorted(state for _, state, *_ in rescued) == ["failed", "queued"]
            (after,) = await admin.job_counters()
            assert after.rescued == 2  # one handed back, one failed on its last attempt
            assert await admin.live_workers() == 1
            conn.execute("UPDATE pgqueue.workers SET last_heartbeat = now() - interval '11 s'")
            assert await admin.live_workers() == 0
        finally:
            await queue.close()
        roll_up(conn)
        assert counted(conn)[("mail", "send", "rescued_total")] == 2


def test_deletes_prunes_and_retries_by_hand_move_the_gauges_never_the_counters(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, attempts, started_at, finished_at)
            SELECT 'q', 't', s::pgqueue.job_state, 1, now() - interval '1 s', now()
            FROM unnest(ARRAY['succeeded', 'succeeded', 'failed', 'cancelled']) AS s
            """
        )
        conn.execute("INSERT INTO pgqueue.jobs (queue, task) VALUES ('q', 't')")
        first = counted(conn)
        assert first == recount(conn)
        roll_up(conn)

        # A retry by hand: the failed job is queued again; failed_total stays.
        failed_id = conn.execute("SELECT id FROM pgqueue.jobs WHERE state = 'failed'").fetchone()[0]
        conn.execute("SELECT pgqueue.retry_job(%s)", (failed_id,))
        after_retry = counted(conn)
        assert gauges(after_retry) == gauges(recount(conn))
        assert after_retry[("q", "t", "failed_total")] == 1
        assert ("q", "t", "failed") not in after_retry
        assert_never_lower(first, after_retry)

        # Pruning and a DELETE by hand: the rows go from the gauges, not from the counters.
        conn.execute("SELECT pgqueue.prune_jobs(interval '0', interval '0', interval '0')")
        conn.execute("DELETE FROM pgqueue.jobs WHERE state = 'queued'")
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
        after_delete = counted(conn)
        assert gauges(after_delete) == {}
        assert counters(after_delete) == counters(after_retry)
        roll_up(conn)
        assert counted(conn) == after_delete

        # TRUNCATE (no transition table) zeroes the gauges too, counters kept.
        conn.execute("INSERT INTO pgqueue.jobs (queue, task) VALUES ('q', 't'), ('r', 'u')")
        before_truncate = counted(conn)
        conn.execute("TRUNCATE pgqueue.jobs CASCADE")
        after_truncate = counted(conn)
        assert gauges(after_truncate) == {}
        assert counters(after_truncate) == counters(before_truncate)
        assert after_truncate[("q", "t", "enqueued_total")] == 6
        assert_never_lower(first, after_truncate)


def _write(dsn: str, n: int, rounds: int, per_round: int, errors: list) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(rounds):
                ids = [
                    r[0]
                    for r in conn.execute(
                        "INSERT INTO pgqueue.jobs (queue, task) "
                        "SELECT 'q' || (i %% 2), 't' || %s FROM generate_series(1, %s) i "
                        "RETURNING id",
                        (n, per_round),
                    ).fetchall()
                ]
                conn.execute(
                    "UPDATE pgqueue.jobs SET state = 'running', attempts = 1, "
                    "started_at = now() WHERE id = ANY(%s)",
                    (ids,),
                )
                conn.execute(
                    "UPDATE pgqueue.jobs SET state = 'succeeded', finished_at = now() "
                    "WHERE id = ANY(%s)",
                    (ids[1:],),
                )
                conn.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (ids[1],))
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _roll(dsn: str, done: threading.Event, rolled: list, errors: list) -> None:
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                rolled.append(roll_up(conn))
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_concurrent_writers_and_rollups_lose_nothing(dsn):
    # Four writers insert, claim, complete and delete jobs while three rollups run in a
    # loop: whatever the interleaving, nothing is lost or counted twice.
    writers, rounds, per_round = 4, 30, 5
    done = threading.Event()
    errors: list[BaseException] = []
    rolled: list[int] = []
    threads = [
        threading.Thread(target=_write, args=(dsn, n, rounds, per_round, errors))
        for n in range(writers)
    ]
    rollers = [threading.Thread(target=_roll, args=(dsn, done, rolled, errors)) for _ in range(3)]
    for t in threads + rollers:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    for t in rollers:
        t.join(timeout=30)
    assert not errors
    assert sum(rolled) > 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        figures = counted(conn)
        assert gauges(figures) == gauges(recount(conn))
        roll_up(conn)
        assert counted(conn) == figures
    jobs = rounds * per_round
    for n in range(writers):
        per_metric = of_task(figures, f"t{n}")
        assert per_metric["enqueued_total"] == jobs
        assert per_metric["succeeded_total"] == jobs - rounds
        assert per_metric["running"] == rounds


# --- /metrics: true counters -------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _totals(figures: dict[tuple[str, frozenset], float]) -> dict[tuple[str, frozenset], float]:
    names = ("_total", "_bucket", "_count", "_sum")
    return {
        k: v
        for k, v in figures.items()
        if k[0].startswith(("pgqueue_jobs_", "pgqueue_job_duration")) and k[0].endswith(names)
    }


async def test_pruning_restarts_and_several_api_processes_never_lower_a_total(dsn):
    key = create_key(dsn, name="prometheus", scope="read")[1]
    headers = {"Authorization": f"Bearer {key}"}

    def app():
        settings = ServiceSettings(dsn=dsn, metrics_cache_seconds=0.0, key_cache_seconds=60.0)
        return create_app(settings)

    async def scrape(api) -> dict:
        response = await api.get("/metrics", headers=headers)
        assert response.status_code == 200, response.text
        return _totals(_samples(response.text))

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, attempts, started_at, finished_at)
            SELECT 'q', 't', s::pgqueue.job_state, 2, now() - interval '0.3 s', now()
            FROM unnest(ARRAY['succeeded', 'succeeded', 'failed', 'cancelled']) AS s
            """
        )
    async with AsyncTestClient(app()) as one, AsyncTestClient(app()) as two:
        first = await scrape(one)
        assert first == await scrape(two)
        label = frozenset({("queue", "q"), ("task", "t")})
        assert first[("pgqueue_jobs_succeeded_total", label)] == 2
        assert first[("pgqueue_jobs_retried_total", label)] == 4
        assert first[("pgqueue_job_duration_seconds_count", label)] == 3
        with psycopg.connect(dsn, autocommit=True) as conn:
            pruned = conn.execute(
                "SELECT pgqueue.prune_jobs(interval '0', interval '0', interval '0')"
            ).fetchone()[0]
            assert pruned == 4
        pruned_one, pruned_two = await scrape(one), await scrape(two)
        assert pruned_one == pruned_two == first  # nothing lowered, nothing lost
        with psycopg.connect(dsn, autocommit=True) as conn:
            roll_up(conn)
        assert await scrape(two) == first
    # A restart of the API: a new process reads the same counters.
    async with AsyncTestClient(app()) as restarted:
        assert await scrape(restarted) == first


# --- the rollup service ------------------------------------------------------------------


async def test_a_worker_rolls_the_deltas_up_and_one_rollup_runs_at_a_time(dsn):
    queue = pgqueue.Queue(dsn)

    @queue.task(name="ok")
    async def ok() -> None:
        return None

    job = await queue.enqueue("ok")
    async with running_worker(queue, concurrency=2):
        await wait_for_job(queue, job.id, timeout=30)
        deadline = time.monotonic() + 20
        with psycopg.connect(dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM pgqueue.job_counter_deltas").fetchone()[0]:
                assert time.monotonic() < deadline, "no worker rolled the deltas up"
                await asyncio.sleep(0.1)
            totals = dict(
                conn.execute("SELECT metric, n FROM pgqueue.job_counters WHERE task = 'ok'")
            )
    await queue.close()
    assert totals["enqueued_total"] == totals["succeeded_total"] == totals["succeeded"] == 1

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        rollup = CounterRollup(pool)
        with psycopg.connect(dsn, autocommit=True) as holder:
            holder.execute("INSERT INTO pgqueue.jobs (task) VALUES ('x')")
            holder.execute("SELECT pg_advisory_lock(%s)", (COUNTERS.key,))
            assert await rollup.roll_up() is None  # another holds the election
            holder.execute("SELECT pg_advisory_unlock(%s)", (COUNTERS.key,))
        assert await rollup.roll_up() == 2  # the insert's two rows: queued, enqueued_total
        async with acquire(pool) as conn:
            assert await driver.roll_up_counters(AsyncpgExecutor(conn)) == 0
        assert rollup.counters() == {"counter_deltas_rolled_up": 2}
    finally:
        await pool.close()


# --- the migration's backfill ------------------------------------------------------------


def test_the_migration_counts_the_rows_it_finds(empty_dsn):
    migrate.upgrade(empty_dsn, "0018")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, attempts, started_at, finished_at)
            VALUES ('a', 't', 'succeeded', 3, now() - interval '20 ms', now()),
                   ('a', 't', 'failed', 1, now() - interval '2 s', now()),
                   ('a', 't', 'running', 2, now(), NULL),
                   ('b', 'u', 'queued', 0, NULL, NULL),
                   ('b', 'u', 'cancelled', 0, NULL, now())
            """
        )
    migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        figures = counted(conn)
        assert figures == recount(conn)
        # The succeeded job's 2 retries; the running one's second attempt has not ended.
        assert figures[("a", "t", "retried_total")] == 2
        assert conn.execute("SELECT count(*) FROM pgqueue.job_counter_deltas").fetchone() == (0,)
        throughput = conn.execute(query("dashboard_throughput").replace("$1::", "%s::"), (15,))
        throughput = throughput.fetchall()
        assert throughput == [("a", 0, 2, 1), ("b", 0, 1, 0)]


# --- reads never scan pgqueue.jobs -------------------------------------------------------


def _job_scans(plan: dict) -> list[dict]:
    found = [plan] if plan.get("Relation Name") == "jobs" else []
    for child in plan.get("Plans", []):
        found += _job_scans(child)
    return found


@pytest.mark.parametrize(
    ("name", "sql", "params"),
    [
        ("queue_stats", query("queue_stats"), ()),
        ("metrics_jobs", query("metrics_jobs"), ()),
        ("dashboard_throughput", query("dashboard_throughput").replace("$1::", "%s::"), (15,)),
    ],
)
def test_the_stats_and_metrics_reads_never_scan_the_jobs(dsn, name, sql, params):
    rows = 20_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Mostly finished jobs (what fills a real table), 1,000 queued over two queues
        # and three priorities, 200 of them scheduled for later.
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, priority, attempts, run_at,
                                      started_at, finished_at)
            SELECT 'q' || (i %% 2), 't' || (i %% 3),
                   CASE WHEN i <= 1000 THEN 'queued' ELSE 'succeeded' END::pgqueue.job_state,
                   i %% 3, CASE WHEN i <= 1000 THEN 0 ELSE 1 END,
                   now() + CASE WHEN i <= 200 THEN interval '1 hour' ELSE interval '0' END,
                   CASE WHEN i > 1000 THEN now() - interval '1 s' END,
                   CASE WHEN i > 1000 THEN now() END
            FROM generate_series(1, %s) AS i
            """,
            (rows,),
        )
        conn.execute("ANALYZE pgqueue.jobs")
        roll_up(conn)
        (plan,) = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql.removesuffix(";"), params
        ).fetchone()[0]
        scans = _job_scans(plan["Plan"])
        read = sum(s.get("Actual Rows", 0) * s.get("Actual Loops", 1) for s in scans)
        detail = json.dumps([(s["Node Type"], s.get("Index Name")) for s in scans])
        assert all(s["Node Type"] != "Seq Scan" for s in scans), detail
        # The scheduled jobs (200) counted over the claim index, and a few probes.
        assert read <= 250, f"{name} read {read} rows of pgqueue.jobs: {detail}"
        if name == "queue_stats":
            stats = conn.execute(sql).fetchall()
            assert [(s[0], s[1], s[2]) for s in stats] == [("q0", 500, 400), ("q1", 500, 400)]
