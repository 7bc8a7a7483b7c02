"""The web dashboard, against a real PostgreSQL: server-rendered pages through
Litestar's test client (login, cookie auth, scopes, CSRF, escaping), then the real app
on uvicorn driven by a real headless Chromium through Playwright."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from servekit import serving

from pgqueue.retry import RetryPolicy
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import DASHBOARD_COOKIE, create_key, revoke_key
from pgqueue.service.dashboard_session import safe_next
from pgqueue.service.dashboard_views import queue_rows
from pgqueue.states import JobState
from pgqueue.testing import running_worker, wait_for_job

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
XSS = "<script>alert('pwned')</script>"
HOST = "testserver.local"  # the test client's


@pytest.fixture
def keys(dsn):
    return {
        scope: create_key(dsn, name=f"{scope}-key", scope=scope)[1] for scope in ("read", "admin")
    }


@pytest.fixture
def settings(dsn):
    return ServiceSettings(dsn=dsn, key_cache_seconds=0)


@pytest.fixture
async def client(settings):
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


async def login(client, key: str, next_path: str | None = None):
    page = await client.get("/dashboard/login")
    assert page.status_code == 200
    form = {"csrf_token": csrf_of(page.text), "key": key}
    if next_path is not None:
        form["next"] = next_path
    return await client.post("/dashboard/login", data=form, follow_redirects=False)


def enqueue_sql(dsn: str, task: str = "reports.render", queue: str = "default", **columns) -> int:
    names = ["task", "queue", *columns]
    values = [task, queue, *columns.values()]
    placeholders = ", ".join(["%s"] * len(values))
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"INSERT INTO pgqueue.jobs ({', '.join(names)}) VALUES ({placeholders}) RETURNING id",
            values,
        ).fetchone()
    return row[0]


def job_state(dsn: str, job_id: int) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT state::text FROM pgqueue.jobs WHERE id = %s", (job_id,)
        ).fetchone()[0]


# --- server-rendered, through the test client ----------------------------------------------


async def test_pages_send_a_browser_without_a_key_to_the_login_page(client, keys):
    response = await client.get("/dashboard/jobs?state=failed", follow_redirects=False)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/dashboard/login"
    assert parse_qs(location.query) == {"next": ["/dashboard/jobs?state=failed"]}
    # The login page itself needs no key.
    page = await client.get(response.headers["location"])
    assert page.status_code == 200
    assert 'name="key"' in page.text
    # The fragments a page's script fetches, and posts, get 401 rather than a redirect.
    assert (await client.get("/dashboard/partials/queues")).status_code == 401
    assert (await client.post("/dashboard/jobs/1/retry")).status_code == 401
    # A cookie with a made-up key is no better than none.
    client.cookies.set(DASHBOARD_COOKIE, "pgq_madeup", domain=HOST, path="/dashboard")
    assert (await client.get("/dashboard", follow_redirects=False)).status_code == 303
    # The API itself never takes the cookie, even sent there: only a Bearer header.
    client.cookies.clear()
    client.cookies.set(DASHBOARD_COOKIE, keys["admin"], domain=HOST, path="/")
    assert (await client.get("/dashboard")).status_code == 200
    assert (await client.get("/v1/queues")).status_code == 401


async def test_login_keeps_the_key_in_a_strict_httponly_cookie(client, keys):
    response = await login(client, keys["read"], next_path="/dashboard/jobs?queue=emails")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/jobs?queue=emails"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{DASHBOARD_COOKIE}={keys['read']};")
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path=/dashboard", "samesite=strict"} <= attributes
    assert "secure" not in attributes  # plain http here; https gets Secure
    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert "read-key" in page.text
    # Logging out (a POST with the token) clears it.
    out = await client.post(
        "/dashboard/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False
    )
    assert out.status_code == 303
    assert out.headers["location"] == "/dashboard/login"
    assert f'{DASHBOARD_COOKIE}=""' in out.headers["set-cookie"]
    assert (await client.get("/dashboard", follow_redirects=False)).status_code == 303


async def test_login_refuses_unknown_keys_foreign_next_urls_and_posts_without_a_token(
    client, keys, dsn
):
    refused = await login(client, "pgq_not-a-key")
    assert refused.status_code == 401
    assert "unknown or revoked" in refused.text
    assert DASHBOARD_COOKIE not in refused.headers.get("set-cookie", "")
    no_token = await client.post(
        "/dashboard/login", data={"key": keys["admin"]}, follow_redirects=False
    )
    assert no_token.status_code == 403
    assert "CSRF" in no_token.json()["detail"]
    for foreign in [
        "https://evil.example/dashboard",
        "//evil.example/x",
        "/v1/jobs",
        "/dashboard\\x",
    ]:
        assert safe_next(foreign) == "/dashboard"
        response = await login(client, keys["admin"], next_path=foreign)
        assert response.headers["location"] == "/dashboard"
    # A revoked key's cookie stops working (the key cache is off in these tests).
    key_id, key = create_key(dsn, name="soon-revoked", scope="admin")
    await login(client, key)
    assert (await client.get("/dashboard")).status_code == 200
    assert revoke_key(dsn, key_id)
    assert (await client.get("/dashboard", follow_redirects=False)).status_code == 303


async def test_a_bearer_header_works_on_the_dashboard_too(client, keys):
    page = await client.get("/dashboard", headers={"Authorization": f"Bearer {keys['read']}"})
    assert page.status_code == 200
    assert "read-key" in page.text


async def test_a_read_key_gets_no_admin_buttons_and_its_posts_are_403(client, keys, dsn):
    job_id = enqueue_sql(dsn)
    await login(client, keys["read"])
    for path in ["/dashboard", f"/dashboard/jobs/{job_id}", "/dashboard/partials/queues"]:
        page = await client.get(path)
        assert page.status_code == 200
        assert "/cancel" not in page.text
        assert "/pause" not in page.text
    # The logout form's token: a valid one for this session.
    token = csrf_of((await client.get("/dashboard")).text)
    for action in [f"/dashboard/jobs/{job_id}/cancel", "/dashboard/queues/default/pause"]:
        response = await client.post(action, data={"csrf_token": token}, follow_redirects=False)
        assert response.status_code == 403, action
        assert "admin" in response.json()["detail"]
    assert job_state(dsn, job_id) == "queued"


async def test_admin_actions_need_the_sessions_csrf_token(client, keys, dsn, queue):
    job_id = enqueue_sql(dsn)
    await login(client, keys["admin"])
    page = await client.get(f"/dashboard/jobs/{job_id}")
    token = csrf_of(page.text)
    assert f'action="/dashboard/jobs/{job_id}/cancel"' in page.text
    cancel = f"/dashboard/jobs/{job_id}/cancel"
    for data, headers in [
        ({}, {}),
        ({"csrf_token": "0" * 64}, {}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]:
        response = await client.post(cancel, data=data, headers=headers, follow_redirects=False)
        assert response.status_code == 403, (data, headers)
    assert job_state(dsn, job_id) == "queued"
    # Another browser logged in with the same key has a token of its own.
    first_browser = httpx.Cookies(client.cookies)
    client.cookies.clear()
    await login(client, keys["admin"])
    response = await client.post(cancel, data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 403
    client.cookies = first_browser
    # With the token: cancelled, then retried, each time back to the job's page.
    response = await client.post(cancel, data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/jobs/{job_id}?notice=cancelled"
    assert job_state(dsn, job_id) == "cancelled"
    again = await client.post(cancel, data={"csrf_token": token}, follow_redirects=False)
    assert again.headers["location"] == f"/dashboard/jobs/{job_id}?error=conflict"
    shown = await client.get(again.headers["location"])
    assert "does not apply" in shown.text
    retry = await client.post(
        f"/dashboard/jobs/{job_id}/retry", data={"csrf_token": token}, follow_redirects=False
    )
    assert retry.status_code == 303
    assert job_state(dsn, job_id) == "queued"
    # The token also goes in a header, for scripts.
    response = await client.post(
        "/dashboard/queues/default/pause", headers={"X-CSRF-Token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert {s.queue: s.paused for s in await queue.queue_stats()}["default"] is True
    page = await client.get("/dashboard")
    assert 'class="tag">paused' in page.text
    assert 'action="/dashboard/queues/default/resume"' in page.text
    await client.post("/dashboard/queues/default/resume", data={"csrf_token": token})
    assert {s.queue: s.paused for s in await queue.queue_stats()}["default"] is False


async def test_other_sessions_token_is_refused(client, keys, dsn):
    job_id = enqueue_sql(dsn)
    _, second_admin = create_key(dsn, name="second-admin", scope="admin")
    await login(client, second_admin)
    foreign_token = csrf_of((await client.get("/dashboard")).text)
    client.cookies.clear()
    await login(client, keys["admin"])
    response = await client.post(
        f"/dashboard/jobs/{job_id}/cancel",
        data={"csrf_token": foreign_token},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert job_state(dsn, job_id) == "queued"


async def test_a_job_page_shows_its_progress_escaped(client, keys, dsn):
    job_id = enqueue_sql(dsn, progress=f'{{"step": "{XSS}", "done": 2}}')
    await login(client, keys["read"])
    page = (await client.get(f"/dashboard/jobs/{job_id}")).text
    assert 'id="job-progress"' in page
    assert "&lt;script&gt;" in page
    assert "<script>alert" not in page


async def test_everything_a_job_holds_is_escaped(client, keys, dsn):
    errors = (
        '[{"attempt": 1, "type": "<b>Boom</b>", "message": "<img src=x onerror=alert(1)>",'
        ' "traceback": "Traceback <script>tb()</script>", "at": "now", "worker_id": "<i>w</i>"}]'
    )
    job_id = enqueue_sql(
        dsn,
        args=f'{{"html": "{XSS}"}}',
        idempotency_key=XSS,
        errors=errors,
    )
    await login(client, keys["admin"])
    for path in [
        f"/dashboard/jobs/{job_id}",
        f"/dashboard/partials/jobs/{job_id}",
        "/dashboard",
        f"/dashboard/jobs?task={XSS}&queue={XSS}",
    ]:
        page = await client.get(path)
        assert page.status_code == 200, path
        text = page.text
        for raw in ["<script>alert", "<img src=x", "<b>Boom", "<script>tb", "<i>w</i>"]:
            assert raw not in text, (path, raw)
    detail = (await client.get(f"/dashboard/jobs/{job_id}")).text
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail
    assert "Traceback &lt;script&gt;tb()&lt;/script&gt;" in detail
    assert '<pre class="traceback">' in detail
    # And the pages forbid inline scripts and framing in any case.
    headers = (await client.get("/dashboard")).headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"


async def test_a_job_page_shows_every_attempts_error_and_the_queues_show_throughput(
    client, keys, queue
):
    @queue.task(name="flaky.sum", max_attempts=2, retry=RetryPolicy(base=0.01, jitter=0))
    async def flaky_sum(a: int, b: int) -> int:
        raise ValueError(f"attempt failed for {a}+{b}")

    @queue.task(name="fine.sum")
    async def fine_sum(a: int, b: int) -> int:
        return a + b

    failing = (await flaky_sum.enqueue(1, 2)).id
    fine = [(await fine_sum.enqueue(i, i)).id for i in range(3)]
    async with running_worker(queue, poll_interval=0.1):
        assert (await wait_for_job(queue, failing)).state is JobState.FAILED
        for job_id in fine:
            assert (await wait_for_job(queue, job_id)).state is JobState.SUCCEEDED
    await login(client, keys["read"])
    page = (await client.get(f"/dashboard/jobs/{failing}")).text
    assert page.count('class="attempt-error"') == 2
    assert "Attempt 1" in page
    assert "Attempt 2" in page
    assert page.count("attempt failed for 1+2") >= 2
    assert page.count('<pre class="traceback">') == 2
    assert "raise ValueError" in page
    assert "data-final" in page  # a finished job's page stops refreshing
    succeeded = (await client.get(f"/dashboard/jobs/{fine[0]}")).text
    assert '<pre class="json" id="job-result">0</pre>' in succeeded
    fragment = (await client.get("/dashboard/partials/queues")).text
    row = re.search(r'<tr data-queue="default".*?</tr>', fragment, re.DOTALL).group(0)
    assert '<td class="num throughput">4</td>' in row
    assert "(1 failed)" in row
    # The job list filters by queue, state and task.
    failed_list = (await client.get("/dashboard/jobs?state=failed")).text
    assert f'data-job-id="{failing}"' in failed_list
    assert f'data-job-id="{fine[0]}"' not in failed_list
    by_task = (await client.get("/dashboard/jobs?task=fine.sum&queue=default")).text
    assert all(f'data-job-id="{i}"' in by_task for i in fine)
    assert f'data-job-id="{failing}"' not in by_task
    none = (await client.get("/dashboard/partials/jobs?queue=elsewhere")).text
    assert "No jobs match" in none


def test_throughput_is_laid_out_oldest_minute_first():
    from pgqueue.jobs import QueueStats

    stats = [
        QueueStats("a", 0, 0, 0, 5, 1, 0, None, paused=False),
        QueueStats("b", 0, 0, 0, 0, 0, 0, None, paused=False),
    ]
    rows = queue_rows(stats, [("a", 0, 4, 1), ("a", 2, 2, 0), ("a", 99, 7, 0)], 5)
    a, b = rows
    assert (a.last_minute, a.finished, a.failed) == (4, 6, 1)
    assert a.spark == "▁▁▅▁█"
    assert (b.last_minute, b.finished, b.spark) == (0, 0, "▁▁▁▁▁")


async def test_pagination_and_a_missing_job(client, keys, dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgqueue.jobs (task, queue) "
            "SELECT 'bulk.job', 'bulk' FROM generate_series(1, 60)"
        )
    await login(client, keys["read"])
    first = (await client.get("/dashboard/jobs?queue=bulk")).text
    assert first.count("data-job-id=") == 50
    older = re.search(r'href="(/dashboard/jobs\?[^"]*cursor=\d+)"', first).group(1)
    second = (await client.get(older.replace("&amp;", "&"))).text
    assert second.count("data-job-id=") == 10
    assert "data-refresh" not in second.split("<main>")[1]  # older pages stay put
    missing = await client.get("/dashboard/jobs/999999")
    assert missing.status_code == 404
    assert "No job 999999" in missing.text


async def test_with_auth_off_there_is_no_login_but_posts_still_need_the_token(dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        job_id = enqueue_sql(dsn)
        login_page = await client.get("/dashboard/login", follow_redirects=False)
        assert login_page.status_code == 303
        page = await client.get(f"/dashboard/jobs/{job_id}")
        assert page.status_code == 200
        assert "auth off" in page.text
        assert "Log out" not in page.text
        cancel = f"/dashboard/jobs/{job_id}/cancel"
        assert (await client.post(cancel, follow_redirects=False)).status_code == 403
        response = await client.post(
            cancel, data={"csrf_token": csrf_of(page.text)}, follow_redirects=False
        )
        assert response.status_code == 303
        assert job_state(dsn, job_id) == "cancelled"


async def test_static_files_need_no_key(client):
    script = await client.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "data-refresh" in script.text
    assert (await client.get("/dashboard/static/dashboard.css")).status_code == 200
    assert (await client.get("/dashboard/static/../app.py")).status_code == 404
    assert (await client.get("/dashboard/static/nothing.js")).status_code == 404
    assert "/dashboard" not in (await client.get("/schema/openapi.json")).text


# --- in a real browser ----------------------------------------------------------------------


def chromium_path() -> str | None:
    path = os.environ.get("PGQUEUE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if Path(path).exists() else None


@pytest.fixture
async def browser():
    async_api = pytest.importorskip(
        "playwright.async_api",
        reason="Playwright is not installed: pip install -e '.[dev]'",
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: `apt-get install chromium` (make's install step does it)")
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def live_url(settings):
    """The real app on uvicorn, on a free loopback port."""
    async with serving(create_app(settings), "test-dashboard") as url:
        yield url


async def browser_login(context, url: str, key: str, path: str = "/dashboard"):
    page = await context.new_page()
    await page.goto(f"{url}{path}")
    assert urlsplit(page.url).path == "/dashboard/login"  # sent there, and back after
    await page.fill("#key", key)
    await page.click("#login-form button[type=submit]")
    await page.wait_for_url(f"{url}{path}", timeout=10_000)
    return page


@pytest.fixture
async def emails_and_a_failed_report(queue):
    """Three sent emails, one report job that failed for good, one email still queued."""

    @queue.task(name="emails.send", queue="emails")
    async def send(to: str) -> str:
        return f"sent to {to}"

    @queue.task(name="reports.build", queue="reports", max_attempts=1)
    async def build(report_id: int) -> None:
        raise RuntimeError(f"report {report_id} has no data")

    for i in range(3):
        await send.enqueue(f"user{i}@example.com")
    failed = (await build.enqueue(7)).id
    async with running_worker(queue, poll_interval=0.1):
        assert (await wait_for_job(queue, failed)).state is JobState.FAILED
    queued = (await send.enqueue("later@example.com")).id
    return failed, queued


async def test_a_read_key_watches_new_jobs_appear_in_a_real_browser(
    browser, live_url, keys, queue, emails_and_a_failed_report
):
    from playwright.async_api import expect

    failed, _ = emails_and_a_failed_report
    context = await browser.new_context()
    page = await browser_login(context, live_url, keys["read"])
    await expect(page.locator('tr[data-queue="emails"]')).to_be_visible()
    await expect(page.locator('tr[data-queue="reports"] td.failed')).to_have_text("1")
    await expect(page.locator(".who")).to_contain_text("read-key")
    # No admin buttons for a read key.
    assert await page.locator("form[action$='/pause'], form[action$='/retry']").count() == 0
    # Jobs enqueued now show up by themselves, without reloading the page.
    fresh = (await queue.enqueue("emails.send", {"to": "new@example.com"}, queue="emails")).id
    audit = (await queue.enqueue("audit.log", {"n": 1}, queue="audit")).id
    await expect(page.locator(f'#jobs tr[data-job-id="{fresh}"]')).to_be_visible(timeout=20_000)
    await expect(page.locator(f'#jobs tr[data-job-id="{audit}"]')).to_be_visible()
    await expect(page.locator('tr[data-queue="audit"] td.queued')).to_have_text("1", timeout=20_000)
    await expect(page.locator('tr[data-queue="emails"] td.queued')).to_have_text("2")
    await expect(page.locator("#live")).to_contain_text("updated")
    await page.goto(f"{live_url}/dashboard/jobs/{failed}")
    await expect(page.locator("#job-state")).to_have_text("failed")
    assert await page.locator("form[action$='/retry']").count() == 0
    await context.close()


async def test_an_admin_retries_a_failed_job_in_a_real_browser(
    browser, live_url, keys, dsn, emails_and_a_failed_report
):
    from playwright.async_api import expect

    failed, queued = emails_and_a_failed_report
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await browser_login(context, live_url, keys["admin"], f"/dashboard/jobs/{failed}")
    await expect(page.locator("#job-state")).to_have_text("failed")
    await expect(page.locator(".attempt-error pre.message")).to_have_text("report 7 has no data")
    await expect(page.locator(".attempt-error pre.traceback")).to_contain_text("RuntimeError")
    # The cookie is HttpOnly: the page's script cannot read the key.
    assert keys["admin"] not in await page.evaluate("document.cookie")
    # A POST without the page's CSRF token is refused, cookie or not.
    forged = await page.request.post(
        f"{live_url}/dashboard/jobs/{failed}/retry", form={}, max_redirects=0
    )
    assert forged.status == 403
    assert job_state(dsn, failed) == "failed"
    # The button.
    await page.click("form[action$='/retry'] button")
    await expect(page.locator("#job-state")).to_have_text("queued")
    await expect(page.locator(".flash.notice")).to_have_text("Queued again.")
    assert job_state(dsn, failed) == "queued"
    await expect(page.locator(".attempt-error")).to_have_count(1)  # its history stays
    # A link from elsewhere (which does not carry the SameSite=Strict cookie) lands on the
    # login page, whose script finds the cookie still good and goes on to the job.
    await page.set_content(f'<a id="out" href="{live_url}/dashboard/jobs/{failed}">job</a>')
    await page.click("#out")
    await page.wait_for_url(f"{live_url}/dashboard/jobs/{failed}", timeout=10_000)
    await expect(page.locator("#job-state")).to_have_text("queued")
    await page.goto(f"{live_url}/dashboard/login?next=/dashboard/jobs/{failed}")
    await page.wait_for_url(f"{live_url}/dashboard/jobs/{failed}", timeout=10_000)

    # A screenshot of the overview, for people to look at.
    await page.goto(f"{live_url}/dashboard")
    await expect(page.locator(f'#jobs tr[data-job-id="{queued}"]')).to_be_visible()
    await expect(page.locator('tr[data-queue="emails"] form[action$="/pause"]')).to_be_visible()
    OUTPUT.mkdir(exist_ok=True)
    shot = OUTPUT / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    await context.close()
