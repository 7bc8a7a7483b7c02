"""``/v1/limits`` through Litestar's test client, against a real PostgreSQL: set, read
and clear the limits of a queue and of a key; scopes; errors as problem+json. And the
library's async face of the same calls."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

import pgqueue
from pgqueue.errors import InvalidLimitError
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import SCOPES, create_key

PROBLEM = "application/problem+json"


@pytest.fixture
def keys(dsn):
    return {
        scope: {"Authorization": f"Bearer {create_key(dsn, name=f't-{scope}', scope=scope)[1]}"}
        for scope in SCOPES
    }


@pytest.fixture
async def api(dsn):
    settings = ServiceSettings(dsn=dsn, key_cache_seconds=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def test_limits_are_set_read_and_cleared_over_http(api, keys):
    admin, read = keys["admin"], keys["read"]
    body = {"concurrency": 50, "rate": "100/m", "key_concurrency": 2}
    response = await api.put("/v1/limits/emails", json=body, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["limits"] == [
        {
            "queue": "emails",
            "concurrency_key": None,
            "concurrency": 50,
            "running": 0,
            "rate": "100/m",
            "recent_starts": 0,
            "queued": 0,
        }
    ]
    response = await api.put(
        "/v1/limits/emails/keys/acme", json={"concurrency": 5, "rate": "10/30s"}, headers=admin
    )
    assert response.status_code == 200, response.text
    rows = {r["concurrency_key"]: r for r in response.json()["limits"]}
    assert (rows["acme"]["concurrency"], rows["acme"]["rate"]) == (5, "10/30s")

    listed = (await api.get("/v1/limits", headers=read)).json()["limits"]
    assert [(r["queue"], r["concurrency_key"]) for r in listed] == [
        ("emails", None),
        ("emails", "acme"),
    ]
    assert (await api.get("/v1/limits/emails", headers=read)).status_code == 200

    assert (await api.delete("/v1/limits/emails/keys/acme", headers=admin)).status_code == 204
    assert (await api.delete("/v1/limits/emails/keys/acme", headers=admin)).status_code == 404
    assert (await api.delete("/v1/limits/emails", headers=admin)).status_code == 204
    missing = await api.get("/v1/limits/emails", headers=read)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith(PROBLEM)


async def test_setting_limits_takes_the_admin_scope(api, keys):
    for scope in ("read", "enqueue"):
        response = await api.put("/v1/limits/q", json={"concurrency": 1}, headers=keys[scope])
        assert response.status_code == 403
    assert (await api.get("/v1/limits", headers=keys["read"])).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        # Values the API takes but pgqueue refuses: 422 (problems.py).
        ({"concurrency": 0}, 422),
        ({"rate": "often"}, 422),
        ({"key_rate": "5/y"}, 422),
        # Not the JSON the endpoint takes (a wrong type, an unknown member): 400.
        ({"concurrency": "x"}, 400),
        ({"x": 1}, 400),
    ],
)
async def test_a_bad_limit_is_a_problem(api, keys, body, status):
    response = await api.put("/v1/limits/q", json=body, headers=keys["admin"])
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_the_async_library_face(queue: pgqueue.Queue):
    await queue.set_limit("a", concurrency=3, rate="5/s")
    await queue.set_key_limit("a", "k", concurrency=1)
    rows = await queue.limits("a")
    assert [(r.concurrency_key, r.concurrency) for r in rows] == [(None, 3), ("k", 1)]
    assert await queue.clear_key_limit("a", "k") is True
    assert await queue.clear_limit("a") is True
    assert await queue.limits() == []
    with pytest.raises(InvalidLimitError):
        await queue.set_limit("a", rate="5 per second")


async def test_the_dashboard_shows_running_against_the_limit(api, keys, dsn):
    import re

    from pgqueue.service.auth import create_key as make_key

    await api.put(
        "/v1/limits/mail", json={"concurrency": 50, "rate": "10/m"}, headers=keys["admin"]
    )
    q = pgqueue.Queue(dsn)
    await q.enqueue("t", {}, queue="mail")
    await q.close()
    page = await api.get("/dashboard/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = {"csrf_token": token, "key": make_key(dsn, name="dash", scope="read")[1]}
    await api.post("/dashboard/login", data=form, follow_redirects=False)
    html = (await api.get("/dashboard/partials/queues")).text
    row = html[html.index('data-queue="mail"') :]
    assert "/ 50" in row[: row.index("</tr>")]
    assert "0 of 10/m" in row[: row.index("</tr>")]
