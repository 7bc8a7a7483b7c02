"""pgqueue.contrib.litestar on the real Litestar and a real PostgreSQL: the example app
(examples/litestar_app.py) enqueues in its request's transaction, its injected Queue
answers, and the pgqueue API and dashboard work mounted under /pgqueue with their own
keys, or behind a guard of the app."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from examplekit import loaded_example, signups_and_welcome_jobs
from litestar import Litestar, get
from litestar.exceptions import NotAuthorizedException
from litestar.testing import AsyncTestClient

import pgqueue
from pgqueue.contrib.litestar import PgQueuePlugin, QueueDep
from pgqueue.service.auth import DASHBOARD_COOKIE, create_key
from pgqueue.testing import drain, use_database

CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


@pytest.fixture
def example():
    with loaded_example("litestar_app.py") as module:
        yield module


async def test_the_example_enqueues_in_the_requests_transaction(dsn, example):
    with use_database(example.queue, dsn):
        async with AsyncTestClient(example.create_app()) as client:
            made = await client.post("/signup", json={"email": "ada@example.com"})
            assert made.status_code == 201, made.text
            job_id = made.json()["job_id"]
            assert signups_and_welcome_jobs(dsn) == (1, 1)
            # Blocked after the enqueue, inside the transaction: no user and no job.
            refused = await client.post("/signup", json={"email": "eve@blocked.example"})
            assert refused.status_code == 400, refused.text
            assert "blocked" in refused.text
            assert signups_and_welcome_jobs(dsn) == (1, 1)
            # The injected Queue sees the committed job; a real worker runs it.
            status = await client.get(f"/jobs/{job_id}")
            assert status.json()["state"] == "queued"
            stats = await drain(example.queue)
            assert stats.succeeded == 1
            done = (await client.get(f"/jobs/{job_id}")).json()
            assert done == {
                "id": job_id,
                "state": "succeeded",
                "result": "welcome sent to ada@example.com (user 1)",
            }
    # The plugin closed the Queue with the app: the test's own loop has nothing left.
    assert not example.queue._async


async def test_the_mounted_service_keeps_its_own_api_keys(dsn, example):
    _, read_key = create_key(dsn, name="reader", scope="read")
    with use_database(example.queue, dsn):
        async with AsyncTestClient(example.create_app()) as client:
            assert (await client.get("/pgqueue/healthz")).status_code == 200
            assert (await client.get("/pgqueue/v1/queues")).status_code == 401
            wrong = {"Authorization": "Bearer pgq_madeup"}
            assert (await client.get("/pgqueue/v1/queues", headers=wrong)).status_code == 401
            bearer = {"Authorization": f"Bearer {read_key}"}
            listed = await client.get("/pgqueue/v1/queues", headers=bearer)
            assert listed.status_code == 200, listed.text
            # read cannot enqueue: the scopes hold under the prefix too.
            posted = await client.post(
                "/pgqueue/v1/jobs", headers=bearer, json={"task": "examples.send_welcome"}
            )
            assert posted.status_code == 403
            # The app's own routes are untouched by the mount.
            assert (await client.get("/jobs/1")).status_code == 404


async def test_the_dashboard_works_under_the_mount_path(dsn, example):
    _, read_key = create_key(dsn, name="reader", scope="read")
    with use_database(example.queue, dsn):
        async with AsyncTestClient(example.create_app()) as client:
            # No key: to the login page under the prefix, coming back to where it was.
            away = await client.get("/pgqueue/dashboard/jobs?state=failed", follow_redirects=False)
            assert away.status_code == 303
            location = urlsplit(away.headers["location"])
            assert location.path == "/pgqueue/dashboard/login"
            assert parse_qs(location.query) == {"next": ["/pgqueue/dashboard/jobs?state=failed"]}
            page = await client.get(away.headers["location"])
            assert page.status_code == 200
            csrf = CSRF_RE.search(page.text)
            assert csrf is not None
            # Logging in: the cookie is for the prefixed dashboard only.
            logged = await client.post(
                "/pgqueue/dashboard/login",
                data={
                    "csrf_token": csrf.group(1),
                    "key": read_key,
                    "next": "/pgqueue/dashboard/jobs?state=failed",
                },
                follow_redirects=False,
            )
            assert logged.status_code == 303, logged.text
            assert logged.headers["location"] == "/pgqueue/dashboard/jobs?state=failed"
            cookie = logged.headers["set-cookie"]
            assert cookie.startswith(f"{DASHBOARD_COOKIE}={read_key};")
            assert "path=/pgqueue/dashboard" in cookie.lower()
            # A next outside the dashboard is refused: back to the dashboard's own page.
            html = (await client.get("/pgqueue/dashboard/login?next=/elsewhere")).text
            assert 'value="/pgqueue/dashboard"' in html
            # The pages link, load their assets and refresh under the prefix.
            overview = await client.get("/pgqueue/dashboard")
            assert overview.status_code == 200, overview.text
            text = overview.text
            assert 'data-base="/pgqueue/dashboard"' in text
            assert 'href="/pgqueue/dashboard/static/dashboard.css"' in text
            assert 'href="/pgqueue/dashboard/jobs"' in text
            assert 'data-refresh="/pgqueue/dashboard/partials/jobs?limit=' in text
            assert not re.search(r'(href|src|action|data-refresh)="/dashboard', text)
            css = await client.get("/pgqueue/dashboard/static/dashboard.css")
            assert css.status_code == 200
            assert css.headers["content-type"].startswith("text/css")
            assert (await client.get("/pgqueue/dashboard/partials/jobs?limit=5")).status_code == 200


def admin_header(connection: Any, _handler: Any) -> None:
    if connection.headers.get("x-admin") != "yes":
        raise NotAuthorizedException("admins only")


async def test_a_guard_of_the_app_can_stand_in_for_the_keys(dsn):
    queue = pgqueue.Queue(dsn)

    @get("/")
    async def home(queue: QueueDep) -> str:
        return queue.default_queue

    plugin = PgQueuePlugin(queue, mount_path="/ops/queue", guards=[admin_header], key_auth=False)
    async with AsyncTestClient(Litestar([home], plugins=[plugin])) as client:
        assert (await client.get("/")).text == "default"
        assert (await client.get("/ops/queue/v1/queues")).status_code == 401
        assert (await client.get("/ops/queue/dashboard")).status_code == 401
        ok = await client.get("/ops/queue/v1/queues", headers={"X-Admin": "yes"})
        assert ok.status_code == 200, ok.text
        page = await client.get("/ops/queue/dashboard", headers={"X-Admin": "yes"})
        assert page.status_code == 200
        assert 'href="/ops/queue/dashboard/jobs"' in page.text


def test_the_service_is_never_mounted_open_nor_anywhere():
    queue = pgqueue.Queue("postgresql://nowhere/none")
    with pytest.raises(ValueError, match="open"):
        PgQueuePlugin(queue, mount_path="/pgqueue", key_auth=False)
    with pytest.raises(ValueError, match="mount_path"):
        PgQueuePlugin(queue, mount_path="pgqueue/")
    with pytest.raises(ValueError, match="mount_path"):
        PgQueuePlugin(queue, guards=[admin_header])


async def test_the_dashboards_buttons_come_back_under_the_mount_path(dsn, example):
    _, admin_key = create_key(dsn, name="admin", scope="admin")
    with use_database(example.queue, dsn):
        async with AsyncTestClient(example.create_app()) as client:
            made = await client.post("/signup", json={"email": "ada@example.com"})
            job_id = made.json()["job_id"]
            page = await client.get("/pgqueue/dashboard/login")
            csrf = CSRF_RE.search(page.text)
            assert csrf is not None
            form = {"csrf_token": csrf.group(1), "key": admin_key}
            logged = await client.post(
                "/pgqueue/dashboard/login", data=form, follow_redirects=False
            )
            assert logged.status_code == 303
            assert logged.headers["location"] == "/pgqueue/dashboard"
            job_page = await client.get(f"/pgqueue/dashboard/jobs/{job_id}")
            token = CSRF_RE.search(job_page.text)
            assert token is not None
            assert f'action="/pgqueue/dashboard/jobs/{job_id}/cancel"' in job_page.text
            posted = {"csrf_token": token.group(1)}
            cancelled = await client.post(
                f"/pgqueue/dashboard/jobs/{job_id}/cancel", data=posted, follow_redirects=False
            )
            assert cancelled.status_code == 303, cancelled.text
            assert (
                cancelled.headers["location"]
                == f"/pgqueue/dashboard/jobs/{job_id}?notice=cancelled"
            )
            assert (await client.get(f"/jobs/{job_id}")).json()["state"] == "cancelled"
            paused = await client.post(
                "/pgqueue/dashboard/queues/emails/pause", data=posted, follow_redirects=False
            )
            assert paused.status_code == 303
            assert paused.headers["location"] == "/pgqueue/dashboard?notice=paused"
            left = await client.post(
                "/pgqueue/dashboard/logout", data=posted, follow_redirects=False
            )
            assert left.headers["location"] == "/pgqueue/dashboard/login"
            assert "path=/pgqueue/dashboard" in left.headers["set-cookie"].lower()
