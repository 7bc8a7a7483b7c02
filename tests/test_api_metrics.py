"""GET /metrics and the access log, through Litestar's test client against a real
PostgreSQL: metric names and labels, job figures that move as jobs are enqueued and
finished by a real worker, request metrics by route template, and one access-log event
per request with its request id and never the key or the job's args."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import structlog
from litestar import get
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

import pgqueue
from pgqueue.admin import Admin
from pgqueue.retry import RetryPolicy
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service import metrics as metrics_module
from pgqueue.service.auth import create_key
from pgqueue.testing import running_worker, wait_for_job

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture
def admin_key(dsn):
    return create_key(dsn, name="ops-admin", scope="admin")[1]


@pytest.fixture
def read_key(dsn):
    return create_key(dsn, name="prometheus", scope="read")[1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_app(dsn: str, **overrides):
    # No metrics cache unless a test asks: figures must show what was just done.
    options = {"metrics_cache_seconds": 0.0, "key_cache_seconds": 60.0, **overrides}
    return create_app(ServiceSettings(dsn=dsn, **options))


@pytest.fixture
async def api(dsn):
    async with AsyncTestClient(make_app(dsn)) as client:
        yield client


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, its labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(figures: dict, name: str, **labels: str) -> float | None:
    return figures.get((name, frozenset(labels.items())))


async def scrape(api, key: str) -> dict:
    response = await api.get("/metrics", headers=bearer(key))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == PROMETHEUS_TEXT
    return samples(response.text)


# --- /metrics ------------------------------------------------------------------------------


async def test_metrics_needs_a_key_with_the_read_scope(api, read_key):
    response = await api.get("/metrics")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await api.get("/metrics", headers=bearer("pgq_not-a-key"))).status_code == 401
    assert (await api.get("/metrics", headers=bearer(read_key))).status_code == 200


async def test_job_figures_move_as_jobs_are_enqueued_and_finished(api, admin_key, read_key, dsn):
    headers = bearer(admin_key)
    empty = await scrape(api, read_key)
    assert value(empty, "pgqueue_metrics_database_up") == 1
    assert not [name for name, _ in empty if name.startswith("pgqueue_jobs_")]

    queue = pgqueue.Queue(dsn)

    @queue.task(name="ok", queue="mail")
    async def ok() -> str:
        return "done"

    @queue.task(name="broken", queue="mail", max_attempts=1)
    async def broken() -> None:
        raise RuntimeError("no")

    @queue.task(name="flaky", queue="mail", max_attempts=3, retry=RetryPolicy(base=0, jitter=0))
    async def flaky() -> str:
        if pgqueue.current_job().attempt == 1:
            raise RuntimeError("first time")
        return "second time"

    ids = []
    for task in ("ok", "ok", "broken", "flaky"):
        response = await api.post("/v1/jobs", json={"task": task, "queue": "mail"}, headers=headers)
        assert response.status_code == 202
        ids.append(response.json()["id"])
    await api.post(
        "/v1/jobs", json={"task": "later", "queue": "mail", "delay_seconds": 3600}, headers=headers
    )

    before = await scrape(api, read_key)
    assert value(before, "pgqueue_jobs_enqueued_total", queue="mail", task="ok") == 2
    assert value(before, "pgqueue_jobs_enqueued_total", queue="mail", task="later") == 1
    assert value(before, "pgqueue_queue_depth", queue="mail") == 4
    assert value(before, "pgqueue_queue_scheduled", queue="mail") == 1
    assert value(before, "pgqueue_queue_oldest_claimable_age_seconds", queue="mail") >= 0
    assert value(before, "pgqueue_queue_paused", queue="mail") == 0
    assert value(before, "pgqueue_jobs_succeeded_total", queue="mail", task="ok") == 0
    assert value(before, "pgqueue_job_duration_seconds_count", queue="mail", task="ok") == 0

    async with running_worker(queue, concurrency=4):
        for job_id in ids:
            await wait_for_job(queue, job_id, timeout=30)
    await queue.close()

    after = await scrape(api, read_key)
    assert value(after, "pgqueue_jobs_succeeded_total", queue="mail", task="ok") == 2
    assert value(after, "pgqueue_jobs_succeeded_total", queue="mail", task="flaky") == 1
    assert value(after, "pgqueue_jobs_failed_total", queue="mail", task="broken") == 1
    assert value(after, "pgqueue_jobs_retried_total", queue="mail", task="flaky") == 1
    assert value(after, "pgqueue_jobs_retried_total", queue="mail", task="ok") == 0
    assert value(after, "pgqueue_queue_depth", queue="mail") == 0
    assert value(after, "pgqueue_queue_running", queue="mail") == 0
    assert value(after, "pgqueue_queue_oldest_claimable_age_seconds", queue="mail") == 0
    # Succeeded and failed jobs are in the histogram, every one in the +Inf bucket.
    ok_count = value(after, "pgqueue_job_duration_seconds_count", queue="mail", task="ok")
    assert ok_count == 2
    assert (
        value(after, "pgqueue_job_duration_seconds_bucket", queue="mail", task="ok", le="+Inf") == 2
    )
    assert value(after, "pgqueue_job_duration_seconds_count", queue="mail", task="broken") == 1
    assert value(after, "pgqueue_job_duration_seconds_sum", queue="mail", task="ok") >= 0
    buckets = [
        v
        for (name, labels), v in after.items()
        if name == "pgqueue_job_duration_seconds_bucket" and ("task", "ok") in labels
    ]
    assert len(buckets) == len(metrics_module.DURATION_BUCKETS) + 1

    await api.post("/v1/queues/mail/pause", headers=headers)
    assert value(await scrape(api, read_key), "pgqueue_queue_paused", queue="mail") == 1


async def test_histogram_buckets_take_each_run_time_at_its_upper_bound(api, read_key, dsn):
    # Run times written by hand: exactly on a bound counts in that bucket (le), a
    # microsecond more in the next one.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO pgqueue.jobs (queue, task, state, attempts, started_at, finished_at)
            SELECT 'q', 't', 'succeeded', 1, now() - d, now()
            FROM unnest(ARRAY[interval '0.005 s', interval '0.005001 s', interval '2 hours']) AS d
            """
        )
    figures = await scrape(api, read_key)

    def bucket(le: str) -> float | None:
        return value(figures, "pgqueue_job_duration_seconds_bucket", queue="q", task="t", le=le)

    assert (bucket("0.005"), bucket("0.01"), bucket("3600.0"), bucket("+Inf")) == (1, 2, 2, 3)
    total = value(figures, "pgqueue_job_duration_seconds_sum", queue="q", task="t")
    assert total == pytest.approx(7200.010001)


async def test_scrapes_share_one_query_within_the_cache_period(dsn, read_key, monkeypatch):
    calls = 0
    real = Admin.job_counters

    async def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(Admin, "job_counters", counted)
    async with AsyncTestClient(make_app(dsn, metrics_cache_seconds=60)) as api:
        answers = await asyncio.gather(*(scrape(api, read_key) for _ in range(5)))
        assert calls == 1
        assert all(value(a, "pgqueue_metrics_database_up") == 1 for a in answers)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO pgqueue.jobs (task) VALUES ('fresh')")
        cached = await scrape(api, read_key)
    # Cached: the job enqueued meanwhile is not seen until the period ends.
    assert value(cached, "pgqueue_jobs_enqueued_total", queue="default", task="fresh") is None
    assert calls == 1


async def test_a_slow_query_is_run_less_often_than_the_cache_period(dsn, read_key, monkeypatch):
    # QUERY_SHARE made tiny: the few milliseconds the query takes here then stand for a
    # scan of a huge table, after which the next one must wait far longer than the
    # 10 ms cache period.
    calls = 0
    real = Admin.job_counters

    async def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(Admin, "job_counters", counted)
    monkeypatch.setattr(metrics_module, "QUERY_SHARE", 1e-6)
    async with AsyncTestClient(make_app(dsn, metrics_cache_seconds=0.01)) as api:
        await scrape(api, read_key)
        await asyncio.sleep(0.05)  # well past the cache period
        await scrape(api, read_key)
    assert calls == 1


async def test_a_scrape_answers_without_the_database(dsn, read_key, pg_server):
    async with AsyncTestClient(make_app(dsn)) as api:
        assert value(await scrape(api, read_key), "pgqueue_metrics_database_up") == 1  # key cached
        dbname = conninfo_to_dict(dsn)["dbname"]
        pg_server.admin_execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        figures = await scrape(api, read_key)
    assert value(figures, "pgqueue_metrics_database_up") == 0
    assert not [name for name, _ in figures if name.startswith("pgqueue_jobs_")]
    assert value(
        figures, "pgqueue_api_requests_total", method="GET", route="/metrics", status="200"
    )


async def test_request_metrics_are_labelled_by_route_template_not_path(api, admin_key, read_key):
    headers = bearer(admin_key)
    await api.get("/v1/jobs/424242", headers=headers)
    await api.get("/v1/jobs/31337", headers=headers)
    await api.get("/v1/jobs/not-an-id", headers=headers)
    await api.get("/no/such/path/99", headers=headers)
    await api.request("BREW", "/v1/jobs", headers=headers)
    figures = await scrape(api, read_key)

    def requests(method: str, route: str, status: str) -> float | None:
        return value(
            figures, "pgqueue_api_requests_total", method=method, route=route, status=status
        )

    assert requests("GET", "/v1/jobs/{job_id}", "404") == 2
    assert requests("GET", "/v1/jobs/{job_id}", "422") == 1
    assert requests("GET", "unmatched", "404") == 1
    assert requests("other", "unmatched", "405") == 1  # no route serves that method
    count = value(
        figures,
        "pgqueue_api_request_duration_seconds_count",
        method="GET",
        route="/v1/jobs/{job_id}",
    )
    assert count == 3
    labels = {v for (_, ls) in figures for _, v in ls}
    assert not {"424242", "31337", "not-an-id", "/no/such/path/99", "BREW"} & labels


# --- access logs ---------------------------------------------------------------------------


def access_events(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "http_request"]


async def test_each_request_logs_one_event_with_its_id_and_the_keys_name(api, admin_key):
    private_arg = "hunter2-do-not-log"
    with structlog.testing.capture_logs() as logs:
        response = await api.post(
            "/v1/jobs?note=hidden-query",
            json={"task": "charge", "args": {"card": private_arg}},
            headers={**bearer(admin_key), "X-Request-ID": "req-42.a:b"},
        )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "req-42.a:b"
    [event] = access_events(logs)
    assert event["log_level"] == "info"
    assert {k: event[k] for k in ("method", "path", "route", "status", "request_id", "key")} == {
        "method": "POST",
        "path": "/v1/jobs",
        "route": "/v1/jobs",
        "status": 202,
        "request_id": "req-42.a:b",
        "key": "ops-admin",
    }
    assert event["duration_ms"] >= 0
    assert "args" not in event
    everything = repr(logs)
    for secret in (admin_key, private_arg, "hidden-query"):
        assert secret not in everything


async def test_a_request_id_that_is_not_sane_is_replaced(api, admin_key):
    for bad in ("has spaces", "x" * 129, "new\nline", ""):
        with structlog.testing.capture_logs() as logs:
            response = await api.get("/healthz", headers={"X-Request-ID": bad})
        generated = response.headers["x-request-id"]
        assert generated != bad
        assert len(generated) == 32
        assert int(generated, 16) >= 0
        [event] = access_events(logs)
        assert event["request_id"] == generated
        assert "key" not in event  # an open path: no key was given


async def test_unmatched_and_refused_requests_are_logged_too(api):
    with structlog.testing.capture_logs() as logs:
        await api.get("/nowhere/7")
        await api.get("/v1/queues")
    unmatched, refused = access_events(logs)
    assert (unmatched["route"], unmatched["status"], unmatched["path"]) == (
        "unmatched",
        404,
        "/nowhere/7",
    )
    assert (refused["route"], refused["status"]) == ("/v1/queues", 401)
    assert "key" not in refused


async def test_other_lines_logged_during_a_request_carry_its_id(dsn, read_key):
    @get("/test-only/log", sync_to_thread=False)
    def logs_something() -> dict[str, str]:
        structlog.get_logger("test").info("inside_handler", detail="x")
        return {"ok": "yes"}

    app = make_app(dsn)
    app.register(logs_something)
    async with AsyncTestClient(app) as api:
        # merge_contextvars: what configure_logging (and structlog's default) puts first.
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            response = await api.get("/test-only/log", headers=bearer(read_key))
            outside = structlog.get_logger("test")
            outside.info("after_request")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    inside = next(e for e in logs if e["event"] == "inside_handler")
    assert inside["request_id"] == request_id
    assert access_events(logs)[0]["request_id"] == request_id
    # Unbound once the request is over.
    assert "request_id" not in next(e for e in logs if e["event"] == "after_request")
