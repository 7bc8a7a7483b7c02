"""The dashboard's schedules page (Litestar's test client, a real PostgreSQL): next and
last runs shown, pause, resume and trigger for admin keys only, behind the CSRF token."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient
from test_dashboard import csrf_of, login

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key
from pgqueue.worker.scheduler import Scheduler

XSS = "<script>alert('pwned')</script>"


@pytest.fixture
def keys(dsn):
    return {
        scope: create_key(dsn, name=f"{scope}-key", scope=scope)[1] for scope in ("read", "admin")
    }


@pytest.fixture
async def client(dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, key_cache_seconds=0))) as c:
        yield c


async def test_the_schedules_page_shows_next_and_last_runs(client, keys, queue, dsn):
    import asyncpg

    await queue.set_schedule(
        "nightly", "app.report", cron="30 2 * * *", timezone="Europe/Paris", args={"x": XSS}
    )
    await queue.set_schedule("beat", "app.beat", every=30)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await Scheduler(pool).tick_round()  # works out their next runs
    finally:
        await pool.close()
    job_id = await queue.trigger_schedule("nightly")
    await login(client, keys["read"])
    page = await client.get("/dashboard/schedules")
    assert page.status_code == 200
    nightly = await queue.get_schedule("nightly")
    assert nightly.next_run_at.strftime("%Y-%m-%d %H:%M:%S") in page.text
    assert f'href="/dashboard/jobs/{job_id}"' in page.text
    assert "<code>30 2 * * *</code> Europe/Paris" in page.text
    assert "every 30 s" in page.text
    assert XSS not in page.text
    assert "/pause" not in page.text  # read keys get no buttons
    token = csrf_of(page.text)
    refused = await client.post(
        "/dashboard/schedules/nightly/pause", data={"csrf_token": token}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert (await queue.get_schedule("nightly")).paused is False


async def test_admins_pause_resume_and_trigger_from_the_page(client, keys, queue):
    await queue.set_schedule("beat", "app.beat", every=30)
    await login(client, keys["admin"])
    page = await client.get("/dashboard/schedules")
    assert 'action="/dashboard/schedules/beat/pause"' in page.text
    token = csrf_of(page.text)
    no_token = await client.post("/dashboard/schedules/beat/pause", follow_redirects=False)
    assert no_token.status_code == 403
    paused = await client.post(
        "/dashboard/schedules/beat/pause", data={"csrf_token": token}, follow_redirects=False
    )
    assert paused.status_code == 303
    assert (await queue.get_schedule("beat")).paused is True
    page = await client.get("/dashboard/schedules?notice=paused")
    assert 'action="/dashboard/schedules/beat/resume"' in page.text
    await client.post("/dashboard/schedules/beat/resume", data={"csrf_token": token})
    assert (await queue.get_schedule("beat")).paused is False
    await client.post("/dashboard/schedules/beat/trigger", data={"csrf_token": token})
    schedule = await queue.get_schedule("beat")
    assert (schedule.last_manual, schedule.last_job_state) == (True, "queued")
    missing = await client.post(
        "/dashboard/schedules/nope/trigger", data={"csrf_token": token}, follow_redirects=False
    )
    assert missing.status_code == 404
