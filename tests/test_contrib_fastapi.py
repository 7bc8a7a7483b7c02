"""pgqueue.contrib.fastapi on the real FastAPI and a real PostgreSQL: the example app
(examples/fastapi_app.py) enqueues in its request's asyncpg transaction, its dependency
hands endpoints the Queue, and the pgqueue API and dashboard work as a sub-application
mounted under /pgqueue, with their own keys."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from examplekit import loaded_example, signups_and_welcome_jobs
from fastapi import FastAPI

import pgqueue
from pgqueue.contrib.fastapi import PgQueue, QueueDep
from pgqueue.service.auth import DASHBOARD_COOKIE, create_key
from pgqueue.testing import drain, use_database

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@pytest.fixture
def example():
    with loaded_example("fastapi_app.py") as module:
        yield module


def serving(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_the_example_enqueues_in_the_requests_transaction(dsn, example):
    app = example.app
    with use_database(example.queue, dsn):
        async with app.router.lifespan_context(app), serving(app) as client:
            made = await client.post("/signup", json={"email": "ada@example.com"})
            assert made.status_code == 201, made.text
            job_id = made.json()["job_id"]
            assert signups_and_welcome_jobs(dsn) == (1, 1)
            # Refused after the enqueue, inside the transaction: no user and no job.
            refused = await client.post("/signup", json={"email": "eve@blocked.example"})
            assert refused.status_code == 400, refused.text
            assert signups_and_welcome_jobs(dsn) == (1, 1)
            # The dependency's Queue sees the committed job; a real worker runs it.
            assert (await client.get(f"/jobs/{job_id}")).json()["state"] == "queued"
            stats = await drain(example.queue)
            assert stats.succeeded == 1
            assert (await client.get(f"/jobs/{job_id}")).json() == {
                "id": job_id,
                "state": "succeeded",
                "result": "welcome sent to ada@example.com (user 1)",
            }
        # The lifespan closed the Queue: nothing of it is left on this loop.
        assert not example.queue._async


async def test_the_mounted_service_keeps_its_keys_and_its_dashboard_works(dsn, example):
    _, read_key = create_key(dsn, name="reader", scope="read")
    app = example.app
    with use_database(example.queue, dsn):
        async with app.router.lifespan_context(app), serving(app) as client:
            assert (await client.get("/pgqueue/healthz")).status_code == 200
            assert (await client.get("/pgqueue/v1/queues")).status_code == 401
            bearer = {"Authorization": f"Bearer {read_key}"}
            assert (await client.get("/pgqueue/v1/queues", headers=bearer)).status_code == 200
            posted = await client.post(
                "/pgqueue/v1/jobs", headers=bearer, json={"task": "examples.send_welcome"}
            )
            assert posted.status_code == 403  # a read key cannot enqueue
            # The dashboard: to its login page under the prefix, and back once logged in.
            away = await client.get("/pgqueue/dashboard/jobs?state=failed")
            assert away.status_code == 303
            location = urlsplit(away.headers["location"])
            assert location.path == "/pgqueue/dashboard/login"
            assert parse_qs(location.query) == {"next": ["/pgqueue/dashboard/jobs?state=failed"]}
            page = await client.get(away.headers["location"])
            csrf = CSRF_RE.search(page.text)
            assert csrf is not None
            logged = await client.post(
                "/pgqueue/dashboard/login",
                data={
                    "csrf_token": csrf.group(1),
                    "key": read_key,
                    "next": "/pgqueue/dashboard/jobs?state=failed",
                },
            )
            assert logged.status_code == 303, logged.text
            assert logged.headers["location"] == "/pgqueue/dashboard/jobs?state=failed"
            assert "path=/pgqueue/dashboard" in logged.headers["set-cookie"].lower()
            assert client.cookies.get(DASHBOARD_COOKIE) == read_key
            overview = await client.get("/pgqueue/dashboard")
            assert overview.status_code == 200, overview.text
            assert 'src="/pgqueue/dashboard/static/dashboard.js"' in overview.text
            assert not re.search(r'(href|src|action|data-refresh)="/dashboard', overview.text)
            js = await client.get("/pgqueue/dashboard/static/dashboard.js")
            assert js.status_code == 200
            assert 'getAttribute("data-base")' in js.text


async def test_the_dependency_needs_the_lifespan(dsn):
    queue = pgqueue.Queue(dsn)
    app = FastAPI()

    @app.get("/")
    async def home(queue: QueueDep) -> str:
        return queue.default_queue

    pgq = PgQueue(queue)
    app.mount("/pgqueue", pgq.service())
    # Without PgQueue's lifespan there is no queue to hand out (a clear error, not None)
    # and the mounted service says it is not running.
    async with serving(app) as client:
        with pytest.raises(RuntimeError, match="lifespan"):
            await client.get("/")
        down = await client.get("/pgqueue/healthz")
        assert down.status_code == 503
        assert "not running" in down.json()["detail"]
    async with pgq.lifespan(app), serving(app) as client:
        assert (await client.get("/")).json() == "default"
        assert (await client.get("/pgqueue/healthz")).status_code == 200
