"""The dashboard's flow page (Litestar's test client, a real PostgreSQL): limits running
against their numbers, set and cleared by admin keys only (behind the CSRF token), and
the sequences with unfinished jobs."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient
from test_dashboard import csrf_of, login

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key

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


async def test_the_page_shows_limits_and_sequences_to_read_keys(client, keys, queue, dsn):
    await queue.set_limit("mail", concurrency=7, rate="100/m")
    await queue.set_key_limit("mail", XSS, concurrency=2)
    first = await queue.enqueue("seq.step", {"n": 1}, queue="seq", sequence_key="acct-1")
    await queue.enqueue("seq.step", {"n": 2}, queue="seq", sequence_key="acct-1")
    await login(client, keys["read"])
    page = await client.get("/dashboard/flow")
    assert page.status_code == 200
    assert 'data-queue="mail"' in page.text
    assert "0 / 7" in page.text  # running against the concurrency limit
    assert "0 / 100/m" in page.text  # starts in the window against the rate
    assert XSS not in page.text  # a key is text, escaped
    assert 'data-sequence="acct-1"' in page.text
    assert f'href="/dashboard/jobs/{first.id}"' in page.text  # the job the rest wait for
    assert "/flow/limits" not in page.text  # read keys get no form and no buttons
    token = csrf_of(page.text)
    refused = await client.post(
        "/dashboard/flow/limits",
        data={"csrf_token": token, "queue": "mail"},
        follow_redirects=False,
    )
    assert refused.status_code == 403
    assert [s.concurrency for s in await queue.limits("mail") if s.concurrency_key is None] == [7]


async def test_admins_set_and_clear_a_queues_limits(client, keys, queue):
    await login(client, keys["admin"])
    page = await client.get("/dashboard/flow")
    assert 'action="/dashboard/flow/limits"' in page.text
    token = csrf_of(page.text)
    no_token = await client.post(
        "/dashboard/flow/limits", data={"queue": "mail", "concurrency": "5"}, follow_redirects=False
    )
    assert no_token.status_code == 403
    done = await client.post(
        "/dashboard/flow/limits",
        data={"csrf_token": token, "queue": "mail", "concurrency": "5", "rate": "10/s"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    (row,) = [s for s in await queue.limits("mail") if s.concurrency_key is None]
    assert (row.concurrency, str(row.rate)) == (5, "10/s")
    page = await client.get("/dashboard/flow?notice=set")
    assert 'action="/dashboard/flow/limits/mail/clear"' in page.text
    await client.post("/dashboard/flow/limits/mail/clear", data={"csrf_token": token})
    assert await queue.limits("mail") == []


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"queue": "", "concurrency": "5"}, "queue"),
        ({"queue": "mail", "concurrency": "five"}, "concurrency"),
        ({"queue": "mail", "rate": "lots"}, None),
        ({"queue": "mail", "concurrency": "0"}, None),
    ],
)
async def test_bad_limits_are_refused_and_nothing_is_written(client, keys, queue, form, field):
    await login(client, keys["admin"])
    token = csrf_of((await client.get("/dashboard/flow")).text)
    refused = await client.post(
        "/dashboard/flow/limits", data={"csrf_token": token, **form}, follow_redirects=False
    )
    assert refused.status_code == 422, refused.text
    if field is not None:
        assert refused.json()["field"] == field
    assert await queue.limits() == []
